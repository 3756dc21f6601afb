"""A real server for tests: the app under uvicorn on a free local port, and an `openai` client."""

from __future__ import annotations

import socket
import threading
import time

import openai
import uvicorn

from lmforge.serve import Settings, create_app

MODEL = "smollm2-135m-instruct"


class Server:
    """An app served by uvicorn on a free port of 127.0.0.1, in a background thread."""

    def __init__(self, lm, app=None, **settings):
        """`lm` served by `create_app`, or `app` as it is."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.settings = Settings(**{"model_id": MODEL, **settings})
        config = uvicorn.Config(
            app or create_app(lm, self.settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
