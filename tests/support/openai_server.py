"""A scripted OpenAI-compatible HTTP server, so tests drive the real `openai` client over HTTP.

Tests queue answers (`reply(text(...), error(500), ...)`); each chat completion request takes
the next one. Recording every request body lets tests check what the client really sent.

Standalone (for the e2e tier)::

    python -m tests.support.openai_server --port 8080 --script answers.json

where answers.json is a list such as
``[{"text": "hi"}, {"tool_calls": [["noop", {}]]}, {"error": 500, "message": "boom"},
{"slow": 2.5, "then": {"text": "late"}}]`` (token counts: optional
``prompt_tokens``/``completion_tokens`` keys on text and tool_calls answers).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import pytest

# Servers tell the client how long to wait before retrying; a short wait keeps tests fast
# where the client would otherwise back off for half a second or more.
_RETRY_AFTER_MS = "10"
FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # what the OpenAI API accepts


@dataclass(frozen=True)
class Answer:
    """One scripted response: an assistant message (status 200) or an error body."""

    status: int = 200
    message: dict[str, Any] = field(default_factory=dict)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error_message: str = ""
    delay: float = 0.0


def text(content: str, *, prompt_tokens: int = 10, completion_tokens: int = 20) -> Answer:
    """An assistant message with text content."""
    return Answer(
        message={"role": "assistant", "content": content, "refusal": None},
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def tool_calls(
    calls: list[tuple[str, dict[str, Any]]], *, prompt_tokens: int = 10, completion_tokens: int = 20
) -> Answer:
    """An assistant message calling functions (`finish_reason` "tool_calls"), ids call_0.."""
    return Answer(
        message={
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {
                    "id": f"call_{index}",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(arguments)},
                }
                for index, (name, arguments) in enumerate(calls)
            ],
        },
        finish_reason="tool_calls",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def error(status: int, message: str = "scripted error") -> Answer:
    """An error response with OpenAI's error body; 5xx ones are retried by the client."""
    return Answer(status=status, error_message=message)


def slow(seconds: float, then: Answer) -> Answer:
    """`then`, served only after `seconds` (for client timeouts)."""
    return replace(then, delay=then.delay + seconds)


def _error_body(message: str, *, kind: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


class ScriptedOpenAI:
    """A real HTTP server on 127.0.0.1 serving queued answers, in a background thread.

    `supports_json_schema=False` makes it refuse `response_format` json_schema with a 400 (as
    servers without structured output do) without taking a queued answer. `api_key`, if set,
    is checked like OpenAI does: any other bearer token gets a 401.
    """

    def __init__(
        self, *, port: int = 0, supports_json_schema: bool = True, api_key: str | None = None
    ) -> None:
        self.supports_json_schema = supports_json_schema
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []  # chat bodies past the key check, in order
        self._port = port
        self._answers: deque[Answer] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the server is not started; use it as a context manager")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def reply(self, *answers: Answer) -> None:
        """Queue answers; requests take them in order."""
        with self._lock:
            self._answers.extend(answers)

    def __enter__(self) -> ScriptedOpenAI:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._port), _handler_for(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            # How often the loop notices `close()`: often enough not to slow each test down.
            kwargs={"poll_interval": 0.02},
            name="scripted-openai",
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving; slow answers still waiting give up at once."""
        self._closing.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def _chat(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            self.requests.append(body)
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema" and not self.supports_json_schema:
            return (
                400,
                _error_body(
                    "response_format type 'json_schema' is not supported by this server",
                    kind="invalid_request_error",
                    param="response_format",
                ),
                {},
            )
        refused = _function_name_refusal(body)
        if refused is not None:
            return 400, refused, {}
        with self._lock:
            answer = self._answers.popleft() if self._answers else None
        if answer is None:
            # Nothing a retry could fix: tell the client not to.
            body_ = _error_body("no scripted answer", kind="server_error")
            return 500, body_, {"x-should-retry": "false"}
        if answer.delay and self._closing.wait(answer.delay):
            return 503, _error_body("server shutting down", kind="server_error"), {}
        if answer.status != 200:
            kind = "server_error" if answer.status >= 500 else "invalid_request_error"
            return (
                answer.status,
                _error_body(answer.error_message, kind=kind),
                {"retry-after-ms": _RETRY_AFTER_MS},
            )
        completion = {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model", "scripted")),
            "choices": [
                {
                    "index": 0,
                    "message": answer.message,
                    "finish_reason": answer.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "total_tokens": answer.prompt_tokens + answer.completion_tokens,
            },
        }
        return 200, completion, {}

    def _unauthorized(self, authorization: str | None) -> dict[str, Any] | None:
        if self.api_key is None or authorization == f"Bearer {self.api_key}":
            return None
        given = (authorization or "").removeprefix("Bearer ")
        return _error_body(f"Incorrect API key provided: {given}", kind="invalid_request_error")


def _function_name_refusal(body: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's 400 for a function name it does not allow (a `/`, say), or None."""
    for index, tool in enumerate(body.get("tools") or []):
        name = (tool.get("function") or {}).get("name", "")
        if not FUNCTION_NAME.fullmatch(name):
            return _error_body(
                f"Invalid 'tools[{index}].function.name': string does not match pattern. "
                "Expected a string that matches the pattern '^[a-zA-Z0-9_-]{1,64}$'.",
                kind="invalid_request_error",
                param=f"tools[{index}].function.name",
            )
    return None


def _handler_for(server: ScriptedOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: pytest shows failures, not every request."""

        def _send(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout); nothing left to tell it

        def _check_auth(self) -> bool:
            refusal = server._unauthorized(self.headers.get("Authorization"))
            if refusal is not None:
                self._send(401, refusal, {})
                return False
            return True

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/v1/models":
                self._send(404, _error_body("not found", kind="invalid_request_error"), {})
            elif self._check_auth():
                models = [{"id": "scripted", "object": "model", "created": 0, "owned_by": "tests"}]
                self._send(200, {"object": "list", "data": models}, {})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, _error_body("not found", kind="invalid_request_error"), {})
                return
            if not self._check_auth():
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self._send(400, _error_body("body is not JSON", kind="invalid_request_error"), {})
                return
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                bad = _error_body("messages is required", kind="invalid_request_error")
                self._send(400, bad, {})
                return
            self._send(*server._chat(body))

    return Handler


@pytest.fixture
def openai_server() -> Iterator[ScriptedOpenAI]:
    """A started ScriptedOpenAI with an empty queue."""
    with ScriptedOpenAI() as server:
        yield server


def answer_from_json(spec: dict[str, Any]) -> Answer:
    """One answer of a standalone script (format in the module docstring)."""
    tokens = {key: int(spec[key]) for key in ("prompt_tokens", "completion_tokens") if key in spec}
    if "slow" in spec:
        return slow(float(spec["slow"]), answer_from_json(spec["then"]))
    if "error" in spec:
        return error(int(spec["error"]), str(spec.get("message", "scripted error")))
    if "tool_calls" in spec:
        return tool_calls([(str(name), dict(args)) for name, args in spec["tool_calls"]], **tokens)
    if "text" in spec:
        return text(str(spec["text"]), **tokens)
    raise ValueError(f"unknown answer {spec!r}: expected text, tool_calls, error or slow")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--script", type=Path, help="JSON list of answers to serve in order")
    parser.add_argument(
        "--no-json-schema", action="store_true", help="refuse response_format json_schema"
    )
    args = parser.parse_args(argv)
    answers = json.loads(args.script.read_text()) if args.script else []
    server = ScriptedOpenAI(port=args.port, supports_json_schema=not args.no_json_schema)
    server.reply(*(answer_from_json(spec) for spec in answers))

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    with server:
        print(server.base_url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
