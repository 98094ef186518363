"""`ials serve`: start the HTTP API on the configured model pack."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument("--pack", help="model pack folder (default: the configured default pack)")
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    if args.pack:
        os.environ["IALS_PACK_PATH"] = os.path.abspath(args.pack)
    print(f"ials-service on http://{args.host}:{args.port} (docs at /docs); Ctrl-C stops it")
    uvicorn.run("service.main:app", host=args.host, port=args.port, log_level=args.log_level)
    return 0
