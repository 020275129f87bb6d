"""The shape of a deployment (`mode` and `shapes` in mesh.yaml, DIBOAS_MODE): which services share
a process, in what order they start and stop, and a clear error for every mistake."""
from __future__ import annotations

import pytest
import yaml

from services.config_files import ConfigError
from services.launcher import stop_order
from services.runtime.config import DEFAULT_TOPOLOGY, load_topology

from meshkit import topology_with_a_service


def topology_with(tmp_path, env=None, **changes):
    raw = yaml.safe_load(DEFAULT_TOPOLOGY.read_text())
    raw.update(changes)
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_topology(path, env=env or {})


def test_each_service_runs_alone_by_default():
    topology = load_topology(env={})
    assert topology.mode == "services"
    assert topology.processes == {name: (name,) for name in topology.services}


def test_the_monolith_runs_everything_in_one_process_upstreams_first():
    topology = load_topology(env={"DIBOAS_MODE": "monolith"})
    assert list(topology.processes) == ["monolith"]
    members = topology.processes["monolith"]
    assert sorted(members) == sorted(topology.services)
    assert members.index("transaction") > max(members.index(u) for u in ("wallet", "provider", "blockchain",
                                                                          "compliance"))
    assert [["monolith"]] == stop_order(topology)


def test_the_hybrid_shape_groups_some_and_leaves_the_others_alone():
    topology = load_topology(env={"DIBOAS_MODE": "hybrid"})
    assert topology.processes == {"core": ("wallet", "transaction"), "provider": ("provider",),
                                  "blockchain": ("blockchain",), "compliance": ("compliance",)}
    assert topology.process_of("transaction") == "core"
    # The core calls provider, blockchain and compliance: it stops first, then they do.
    assert stop_order(topology) == [["core"], ["provider", "blockchain", "compliance"]]


@pytest.mark.parametrize("changes, env, message", [
    ({}, {"DIBOAS_MODE": "cluster"}, "mode (or DIBOAS_MODE) 'cluster' is not a shape of this topology "
                                     "(known: hybrid, monolith, services)"),
    ({"shapes": {"two": {"a": ["wallet"], "b": ["wallet", "provider"]}}}, {"DIBOAS_MODE": "two"},
     "shapes.two: 'wallet' is in two processes, a and b"),
    ({"shapes": {"odd": {"core": ["wallet", "ledger"]}}}, {"DIBOAS_MODE": "odd"},
     "shapes.odd.core names 'ledger', which is not a service"),
    ({"shapes": {"odd": {"wallet": ["wallet", "transaction"]}}}, {"DIBOAS_MODE": "odd"},
     "shapes.odd.wallet: a process may take the name of a service, the gateway or a client only when "
     "it runs just that service"),
    ({"shapes": {"odd": {"core": []}}}, {"DIBOAS_MODE": "odd"}, "shapes.odd.core: names no service"),
    ({"shapes": {"odd": {"Core": ["wallet"]}}}, {"DIBOAS_MODE": "odd"}, "a process name is lower-case"),
    ({"shapes": {"odd": ["wallet"]}}, {"DIBOAS_MODE": "odd"}, "'odd' must be a mapping"),
    ({"mode": "nowhere"}, {}, "mode (or DIBOAS_MODE) 'nowhere' is not a shape"),
])
def test_a_bad_shape_is_refused_with_one_line_naming_it(tmp_path, changes, env, message):
    with pytest.raises(ConfigError) as caught:
        topology_with(tmp_path, env, **changes)
    assert message in str(caught.value)
    assert str(tmp_path / "mesh.yaml") in str(caught.value)


def test_a_shape_from_the_file_and_the_environment_overriding_it(tmp_path):
    topology = topology_with(tmp_path, {"DIBOAS_MODE": "services"}, mode="monolith")
    assert topology.mode == "services"
    assert topology_with(tmp_path, mode="monolith").processes == {
        "monolith": load_topology(env={"DIBOAS_MODE": "monolith"}).processes["monolith"]}


def test_the_start_order_is_every_service_upstreams_first(tmp_path):
    shipped = load_topology(env={})
    assert sorted(shipped.start_order) == sorted(shipped.services)
    assert shipped.start_order.index("transaction") > max(shipped.start_order.index(u)
                                                          for u in shipped.services["transaction"].upstreams)
    # A service added first in the file but calling the transaction service starts after it.
    grown = load_topology(topology_with_a_service(tmp_path, "extra", upstreams=["transaction"]), env={})
    assert sorted(grown.start_order) == sorted([*shipped.services, "extra"])
    assert grown.start_order.index("extra") > grown.start_order.index("transaction")
