"""Serve an ASGI app factory with uvicorn on 127.0.0.1, for ``browser_fixtures.live_server``.

    python tests/app/_serve.py --factory rlhflab.app.web:create_app --db-url URL --port-file FILE

Binds the port itself (0: a free one), writes its number to --port-file, then hands the socket to
uvicorn, so the port cannot be taken between choosing it and serving on it."""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: factories in tests.*


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factory", default="rlhflab.app.web:create_app", help="module:function returning the app")
    parser.add_argument("--db-url", default=None, help="passed to the factory as its one argument")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args()

    import uvicorn

    module, _, name = args.factory.partition(":")
    make_app = getattr(importlib.import_module(module), name)
    app = make_app(args.db_url) if args.db_url is not None else make_app()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    tmp = args.port_file + ".tmp"
    Path(tmp).write_text(str(sock.getsockname()[1]))
    os.replace(tmp, args.port_file)  # readers never see a half-written number

    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
