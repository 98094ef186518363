# A worker: CUDA torch (from the PyTorch image), the project, dlib's landmark model. Build from the
# repository root:
#   docker build -f docker/worker.Dockerfile -t ials-worker .
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# The package metadata first, so the dependency layer is cached across code changes; torch is already
# installed and satisfies `torch>=2.1`.
COPY pyproject.toml README.md /app/
COPY models/ /app/models/
COPY worker/ /app/worker/
COPY service/ /app/service/
COPY cli/ /app/cli/
RUN pip install /app

RUN useradd --create-home --uid 1000 ials && mkdir -p /data/store && chown ials /data/store
USER ials
# Healthy once this container's worker has loaded its pack and announced itself in Redis.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=5 \
    CMD python -m worker.healthcheck
CMD ["ials", "worker"]
