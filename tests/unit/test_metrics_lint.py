"""The metrics lint (tools/metrics_lint.py): each Prometheus naming rule it checks, and that the
process's own metrics, as a service exposes them, pass it."""
from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tools.metrics_lint import main, problems


def exposition(*families: str) -> str:
    return "\n".join(families) + "\n"


def test_conventional_metrics_pass():
    registry = CollectorRegistry()
    Counter("shop_orders", "Orders taken", ["service", "code"], registry=registry).labels("a", "OK").inc()
    Gauge("shop_queue_depth", "Items waiting", registry=registry).set(3)
    Histogram("shop_latency_seconds", "Latency", ["method"], registry=registry).labels("Get").observe(0.1)
    assert problems(generate_latest(registry).decode()) == []


@pytest.mark.parametrize(("family", "expected"), [
    ("# TYPE a_total counter\na_total 1", "a_total: no help text"),
    ("# HELP shopOrders_total x\n# TYPE shopOrders_total counter\nshopOrders_total 1",
     "shopOrders_total: metric names should be written in snake_case, not camelCase"),
    ("# HELP shop_items_total x\n# TYPE shop_items_total gauge\nshop_items_total 1",
     "shop_items_total: non-counter metrics should not have a _total suffix"),
    ("# HELP shop_items_count x\n# TYPE shop_items_count gauge\nshop_items_count 1",
     "shop_items_count: non-histogram and non-summary metrics should not have a _count suffix"),
    ("# HELP shop_latency_milliseconds x\n# TYPE shop_latency_milliseconds gauge\nshop_latency_milliseconds 1",
     "shop_latency_milliseconds: use base unit seconds instead of milliseconds"),
    ("# HELP shop_latency_ms x\n# TYPE shop_latency_ms gauge\nshop_latency_ms 1",
     "shop_latency_ms: metric names should not contain the abbreviated unit 'ms'"),
    ("# HELP shop_errors_counter_total x\n# TYPE shop_errors_counter_total counter\nshop_errors_counter_total 1",
     "shop_errors_counter_total: metric names should not contain the metric type 'counter'"),
    ("# HELP shop_up x\n# TYPE shop_up gauge\nshop_up{Service=\"a\"} 1",
     "shop_up: label 'Service' should be written in snake_case"),
    ("# HELP shop_up x\n# TYPE shop_up gauge\nshop_up{le=\"1\"} 1",
     "shop_up: the label 'le' is reserved for histogram buckets"),
    ("# HELP shop_disk_percent x\n# TYPE shop_disk_percent gauge\nshop_disk_percent 1",
     "shop_disk_percent: use base unit ratio (0 to 1) instead of percent"),
    ("shop_mystery 1", "shop_mystery: no help text"),
    ("# HELP shop_orders x\n# TYPE shop_orders counter\nshop_orders 1",
     "shop_orders: counter metrics should have a _total suffix"),
])
def test_each_rule(family, expected):
    assert expected in problems(exposition(family))


def test_the_command_exits_1_and_prints_each_problem(capsys, monkeypatch):
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO("# TYPE a_total counter\na_total 1\n"))
    assert main(["-"]) == 1
    assert capsys.readouterr().out == "a_total: no help text\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("this is { not metrics\n"))
    assert main(["-"]) == 2
    assert "cannot read -" in capsys.readouterr().err
