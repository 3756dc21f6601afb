"""`lmforge serve`: the OpenAI-compatible API and the playground, on one host and port."""

from __future__ import annotations

import argparse
import errno
import socket
import sys

from lmforge.cli.options import add_model_flags, load_model
from lmforge.errors import ConfigError


def cmd_serve(args: argparse.Namespace) -> int:
    import threading

    import uvicorn

    from lmforge.checkpoints import DEFAULT_MODEL
    from lmforge.serve import Settings, create_app

    for name in ("port", "max_batch", "max_tokens"):
        if getattr(args, name) < 1:
            raise ConfigError(
                f"--{name.replace('_', '-')} {getattr(args, name)}: expected at least 1"
            )
    listening = bind(args.host, args.port)  # before loading: a busy port fails at once
    if args.vectors:
        return serve_vectors(args, listening)
    lm = load_model(args)
    settings = Settings(
        model_id=args.model_id or str(args.model or DEFAULT_MODEL),
        api_key=args.api_key,
        max_tokens=args.max_tokens,
        max_batch=args.max_batch,
        request_timeout_s=args.timeout,
    )
    app = create_app(lm, settings, background_worker=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))

    def serve_http() -> None:
        try:
            server.run(sockets=[listening])
        finally:
            app.state.batcher.stop()  # the HTTP side is gone: nothing more will come

    threading.Thread(target=serve_http, name="lmforge-http", daemon=True).start()
    print(
        f"lmforge serve: http://{args.host}:{args.port}/ (model {settings.model_id!r}, "
        f"{lm.precision or 'float32'})",
        file=sys.stderr,
    )
    app.state.batcher.work_forever()  # the model stays on the thread that loaded it
    return 0 if server.started else 1


def serve_vectors(args: argparse.Namespace, listening: socket.socket) -> int:
    """Word vectors as an embeddings-only API (each text's mean word vector)."""
    import uvicorn

    from lmforge.embeddings import KeyedVectors
    from lmforge.serve import Settings, create_vectors_app

    if args.model:
        raise ConfigError("give --model (a language model) or --vectors (word vectors), not both")
    settings = Settings(model_id=args.model_id or args.vectors, api_key=args.api_key)
    app = create_vectors_app(KeyedVectors.load(args.vectors), settings)
    print(f"lmforge serve: http://{args.host}:{args.port}/v1/embeddings", file=sys.stderr)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listening])
    return 0


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a clear error (port in use, unknown host, no rights)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listening = socket.socket(family, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
        listening.listen(2048)
    except OSError as exc:
        reason = (
            "is already in use"
            if exc.errno == errno.EADDRINUSE
            else f"failed ({exc.strerror or exc})"
        )
        raise ConfigError(
            f"--host {host} --port {port}: listening there {reason}; pick another --port"
        ) from None
    return listening


def add_parsers(verbs) -> None:
    serve = verbs.add_parser("serve", help="OpenAI-compatible HTTP API and a playground at /")
    add_model_flags(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help="require `Authorization: Bearer KEY`")
    serve.add_argument("--model-id", help="the name clients use (default: --model)")
    serve.add_argument(
        "--vectors", help="serve word2vec/GloVe vectors as an embeddings model instead"
    )
    serve.add_argument("--max-tokens", type=int, default=2048, help="per-request limit")
    serve.add_argument("--max-batch", type=int, default=8, help="rows generated together")
    serve.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    serve.set_defaults(func=cmd_serve)
