"""http_request against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from agent_contract import RiskLevel, ToolRegistry
from agent_contract.builtin.http import HTTP_REQUEST
from agent_runtime.registry import ToolFailure, ToolTimeout
from agent_runtime.tools.http import host_allowed
from tests.runtime.helpers import call

BIG = b"x" * 100_000


class Site:
    """The server's address and every request it received (method, path, headers, body)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"


@pytest.fixture
def site() -> Iterator[Site]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = Site(server.server_address[1])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

        def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                with contextlib.suppress(BrokenPipeError):  # the client gave up (timeout test)
                    self.wfile.write(body)

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            seen = {"method": self.command, "path": self.path, "body": body}
            state.requests.append({**seen, "headers": dict(self.headers)})
            if self.path == "/json":
                payload = json.dumps({"hello": "world"}).encode()
                cookie = {"Set-Cookie": "session=secret", "Content-Type": "application/json"}
                self._answer(200, payload, cookie)
            elif self.path == "/echo":
                echoed = {**seen, "x-token": self.headers.get("X-Token")}
                self._answer(201, json.dumps(echoed).encode(), {"Content-Type": "application/json"})
            elif self.path == "/big":
                self._answer(200, BIG, {"Content-Type": "application/json"})
            elif self.path == "/away":
                self._answer(302, b"", {"Location": f"http://localhost:{state.port}/json"})
            elif self.path == "/slow":
                state.release.wait(10)
                self._answer(200, b"late", {})
            else:
                self._answer(404, b"no such page", {"Content-Type": "text/plain"})

        do_GET = do_POST = do_HEAD = _serve

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join()


def test_get_parses_json_and_reports_only_safe_headers(site: Site) -> None:
    outcome = call("http_request", {"url": site.url("/json")}, allowed_hosts=[site.host])
    assert outcome.outputs["status"] == 200
    assert outcome.outputs["json"] == {"hello": "world"}
    assert outcome.outputs["headers"]["content-type"] == "application/json"
    assert "set-cookie" not in outcome.outputs["headers"]
    assert outcome.outputs["truncated"] is False


def test_post_sends_json_and_headers_from_env(site: Site) -> None:
    params = {
        "url": site.url("/echo"),
        "method": "POST",
        "json": {"n": 1},
        "headers": {"X-Trace": "abc"},
        "headersFromEnv": {"X-Token": "API_TOKEN"},
    }
    outcome = call(
        "http_request", params, env={"API_TOKEN": "t0ps3cret"}, allowed_hosts=[site.host]
    )
    assert outcome.outputs["status"] == 201
    received = site.requests[-1]
    assert received["method"] == "POST"
    assert json.loads(received["body"]) == {"n": 1}
    assert received["headers"]["X-Trace"] == "abc"
    assert received["headers"]["X-Token"] == "t0ps3cret"


def test_missing_header_variable_fails_before_any_request(site: Site) -> None:
    params = {"url": site.url("/json"), "headersFromEnv": {"X-Token": "NOPE"}}
    with pytest.raises(ToolFailure, match="NOPE is unset"):
        call("http_request", params, allowed_hosts=[site.host])
    assert site.requests == []


def test_host_outside_the_allowlist_is_refused_unsent(site: Site) -> None:
    params = {"url": f"http://localhost:{site.port}/json"}
    with pytest.raises(ToolFailure, match=r"host 'localhost:\d+' is not allowed \(allowed: 127"):
        call("http_request", params, allowed_hosts=[site.host])
    assert site.requests == []


def test_no_allowlist_at_all_refuses(site: Site) -> None:
    with pytest.raises(
        ToolFailure, match=r"the pool grants none; list the hosts .* spec.allowedHosts"
    ):
        call("http_request", {"url": site.url("/json")})
    assert site.requests == []


def test_params_cannot_grant_a_host_the_pool_does_not(site: Site) -> None:
    with pytest.raises(ToolFailure, match="the pool grants none"):
        call("http_request", {"url": site.url("/json"), "allowedHosts": [site.host]})
    assert site.requests == []


@pytest.mark.parametrize(
    ("pool", "given"),
    [("127.0.0.1:1", "{host}"), ("{host}", "example.com")],
    ids=["params-cannot-widen", "params-narrow-to-nothing"],
)
def test_params_only_narrow_the_pool_allowlist(site: Site, pool: str, given: str) -> None:
    params = {"url": site.url("/json"), "allowedHosts": [given.format(host=site.host)]}
    with pytest.raises(ToolFailure, match="keeps none of the pool's"):
        call("http_request", params, allowed_hosts=[pool.format(host=site.host)])
    assert site.requests == []


def test_redirect_to_a_host_outside_the_allowlist_is_refused(site: Site) -> None:
    params = {"url": site.url("/away")}
    with pytest.raises(ToolFailure, match=r"'localhost:\d+' is not allowed"):
        call("http_request", params, allowed_hosts=[site.host])
    assert [r["path"] for r in site.requests] == ["/away"]


def test_http_error_fails_with_status_and_body_unless_told_not_to(site: Site) -> None:
    params: dict[str, Any] = {"url": site.url("/missing")}
    with pytest.raises(ToolFailure, match="returned HTTP 404: no such page") as failure:
        call("http_request", params, allowed_hosts=[site.host])
    assert failure.value.outputs["status"] == 404
    outcome = call("http_request", {**params, "failOnStatus": False}, allowed_hosts=[site.host])
    assert outcome.outputs["status"] == 404
    assert outcome.outputs["body"] == "no such page"


def test_large_body_is_truncated_and_not_parsed(site: Site) -> None:
    params = {"url": site.url("/big"), "maxBodyBytes": 1000}
    outcome = call("http_request", params, allowed_hosts=[site.host])
    assert outcome.outputs["body"] == "x" * 1000
    assert outcome.outputs["truncated"] is True
    assert "json" not in outcome.outputs


def test_head_has_no_body(site: Site) -> None:
    params = {"url": site.url("/json"), "method": "HEAD"}
    outcome = call("http_request", params, allowed_hosts=[site.host])
    assert outcome.outputs["status"] == 200
    assert outcome.outputs["body"] == ""


def test_slow_server_times_out(site: Site) -> None:
    params = {"url": site.url("/slow"), "timeoutSeconds": 0.2}
    with pytest.raises(ToolTimeout):
        call("http_request", params, allowed_hosts=[site.host])


def test_body_and_json_together_are_invalid() -> None:
    errors = HTTP_REQUEST.param_errors({"url": "http://a/", "body": "x", "json": {}})
    assert len(errors) == 1 and errors[0].startswith("params: ")


@pytest.mark.parametrize(
    ("method", "risk"),
    [("GET", RiskLevel.low), ("HEAD", RiskLevel.low), ("POST", RiskLevel.medium)],
)
def test_risk_depends_on_the_method(method: str, risk: RiskLevel) -> None:
    params = {"url": "http://a/", "method": method}
    assert HTTP_REQUEST.effective_risk(params, ToolRegistry()) == risk
    assert HTTP_REQUEST.risk == RiskLevel.medium


@pytest.mark.parametrize(
    ("url", "entry", "allowed"),
    [
        ("http://api.example.com/x", "api.example.com", True),
        ("http://API.example.com/x", "api.example.com", True),
        ("https://api.example.com/x", "api.example.com:443", True),
        ("http://api.example.com:8080/x", "api.example.com:443", False),
        ("http://a.b.example.com/x", "*.example.com", True),
        ("http://example.com/x", "*.example.com", False),
        ("http://evilexample.com/x", "*.example.com", False),
        ("http://example.com.evil.org/x", "example.com", False),
        ("http://[::1]:8080/x", "[::1]:8080", True),
    ],
)
def test_host_matching(url: str, entry: str, allowed: bool) -> None:
    assert host_allowed(httpx.URL(url), [entry]) is allowed
