"""Services sharing a process (the monolith) share one metrics registry; each service's endpoint
shows its own series (and the process's), so that scraping them all counts each call once."""
from __future__ import annotations

import urllib.request

from services.runtime.config import Address
from services.runtime.metrics import SERVER_CALLS, serve_metrics


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def test_each_service_endpoint_shows_its_own_series_and_the_process_ones():
    SERVER_CALLS.labels("view-a", "GetThing", "OK").inc(3)
    SERVER_CALLS.labels("view-b", "GetThing", "OK").inc(5)
    a = scrape(serve_metrics(Address("127.0.0.1", 0), "view-a"))
    b = scrape(serve_metrics(Address("127.0.0.1", 0), "view-b"))
    assert 'diboas_rpc_server_calls_total{code="OK",method="GetThing",service="view-a"} 3.0' in a
    assert 'service="view-b"' not in a
    assert 'diboas_rpc_server_calls_total{code="OK",method="GetThing",service="view-b"} 5.0' in b
    assert 'service="view-a"' not in b
    assert "python_info" in a and "python_info" in b          # the process's own, on each
