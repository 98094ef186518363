# The HTTP API: FastAPI + uvicorn, no torch. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t ials-api .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY docker/requirements-api.txt /app/requirements-api.txt
RUN pip install -r /app/requirements-api.txt

COPY service/ /app/service/

RUN useradd --create-home --uid 1000 ials && mkdir -p /data/store && chown ials /data/store
USER ials
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["uvicorn", "service.main:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
