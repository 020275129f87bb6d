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

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rest = demo.Rest(SimpleNamespace(gateway=SimpleNamespace(http=Address("127.0.0.1", server.server_port)),
                                     certs_dir=None), out=lambda *_: None)
    yield rest, state
    server.shutdown()


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
