"""The demo's REST client: a read answered 503 (a service restarting) is tried again; a write,
or a read that stays 503 past the retry budget, fails with the gateway's message."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from services import demo
from services.runtime.config import Address


def _served(handler, state):
    """The demo's REST client of a stand-in gateway served by `handler`, and its `state`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rest = demo.Rest(SimpleNamespace(gateway=SimpleNamespace(http=Address("127.0.0.1", server.server_port)),
                                     certs_dir=None), out=lambda *_: None)
    yield rest, state
    server.shutdown()


@pytest.fixture
def gateway():
    """A stand-in gateway: answers 503 to the first `unavailable` requests, then 200."""
    state = SimpleNamespace(unavailable=2, seen=[])

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            state.seen.append(self.command)
            status, body = (503, {"code": 14, "message": "no healthy upstream"}) if state.unavailable > 0 \
                else (200, {"ok": True})
            state.unavailable -= 1
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    yield from _served(Handler, state)


def test_a_read_answered_503_is_tried_again_until_it_is_answered(gateway):
    rest, state = gateway
    assert rest.call("GET", "/v1/wallets", "t") == {"ok": True}
    assert state.seen == ["GET", "GET", "GET"]


def test_a_write_answered_503_is_not_sent_again(gateway):
    rest, state = gateway
    with pytest.raises(demo.DemoFailed, match="POST /v1/wallets answered 503: no healthy upstream"):
        rest.call("POST", "/v1/wallets", "t", {"currencyCode": "USD"})
    assert state.seen == ["POST"]


def test_a_read_that_stays_503_fails_once_the_budget_is_spent(gateway, monkeypatch):
    rest, state = gateway
    state.unavailable = 1000
    monkeypatch.setattr(demo, "READ_RETRY_SECONDS", 0.5)
    with pytest.raises(demo.DemoFailed, match="GET /v1/wallets answered 503"):
        rest.call("GET", "/v1/wallets", "t")
    assert 2 <= len(state.seen) <= 3


@pytest.fixture
def streaming():
    """A stand-in gateway whose 200 is a body sent in `parts`, with a pause of `pause` seconds
    before each, left open (no length, no close) when `hang` is set."""
    state = SimpleNamespace(parts=[], pause=0.0, hang=False, unavailable=0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self):
            if state.unavailable > 0:
                state.unavailable -= 1
                data = json.dumps({"code": 14, "message": "no healthy upstream"}).encode()
                self.send_response(503)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_response(200)
            self.end_headers()
            for part in state.parts:
                threading.Event().wait(state.pause)
                self.wfile.write(part.encode())
                self.wfile.flush()
            if state.hang:
                threading.Event().wait(2)

        def log_message(self, *args):
            pass

    yield from _served(Handler, state)


def test_a_stream_gives_each_element_of_its_array_as_it_arrives_after_a_503(streaming):
    rest, state = streaming
    state.unavailable, state.parts = 1, ['[{"n": 1}', ',{"n": "\u00e9', '"}', "]"]
    assert list(rest.stream("/v1/x:watch", "t")) == [{"n": 1}, {"n": "\u00e9"}]


def test_a_stream_that_breaks_off_or_stays_silent_fails_with_a_message_not_a_traceback(streaming, monkeypatch):
    rest, state = streaming
    state.parts = ['[{"n": 1}', ","]
    with pytest.raises(demo.DemoFailed, match="the stream ended before its JSON array was closed"):
        list(rest.stream("/v1/x:watch", "t"))
    state.hang = True
    monkeypatch.setattr(demo, "STREAM_SECONDS", 0.3)
    with pytest.raises(demo.DemoFailed, match="GET /v1/x:watch: the stream broke off"):
        list(rest.stream("/v1/x:watch", "t"))
