"""A JSON webhook receiver: what Apprise's `json://` URLs post to, recorded for tests.

Each POST body is kept (`received`); `fail_next(n)` answers the next n posts with 500, as
a service that is down would. Tests wait for posts with `wait_for(count)`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class Webhook:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.refused = 0
        self._failures = 0
        self._changed = threading.Condition()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with webhook._changed:
                    failing = webhook._failures > 0
                    if failing:
                        webhook._failures -= 1
                        webhook.refused += 1
                    else:
                        webhook.received.append({"path": self.path, **json.loads(body or b"{}")})
                    webhook._changed.notify_all()
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "hook", userinfo: str = "") -> str:
        """An Apprise URL posting JSON here."""
        at = f"{userinfo}@" if userinfo else ""
        return f"json://{at}127.0.0.1:{self.port}/{path}"

    def fail_next(self, count: int) -> None:
        with self._changed:
            self._failures = count

    def wait_for(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The first `count` posts received, once they have come (AssertionError if not)."""
        with self._changed:
            arrived = self._changed.wait_for(lambda: len(self.received) >= count, timeout)
            assert arrived, f"{len(self.received)} of {count} notices received: {self.received}"
            return list(self.received)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    try:
        yield hook
    finally:
        hook.close()
