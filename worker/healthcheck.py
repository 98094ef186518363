"""Container health check: exits 0 once a worker on this host has loaded its pack (see `PackWorker`)."""

from __future__ import annotations

import socket
import sys

from redis import Redis
from redis.exceptions import RedisError

from service.config import get_settings
from service.queue import WORKER_PACK_KEY


def main() -> int:
    settings = get_settings()
    if settings.redis_url is None:
        return 1
    try:
        with Redis.from_url(settings.redis_url, socket_timeout=3) as client:
            keys = client.keys(WORKER_PACK_KEY.format(f"{socket.gethostname()}*"))
    except RedisError:
        return 1
    return 0 if keys else 1


if __name__ == "__main__":
    sys.exit(main())
