"""The services and the launcher as real processes: clear configuration errors, SIGTERM, make run."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from services.config_files import ConfigError
from services.runtime.config import load_topology

from meshkit import alive, process_env

SERVICES = ["wallet", "transaction", "provider", "blockchain", "compliance"]


@pytest.fixture
def env(pki, tmp_path) -> dict:
    """Environment for a mesh on free ports, the test PKI and a temporary state dir."""
    return process_env(pki, tmp_path / "state", DIBOAS_UNREADY_SECONDS="0.2", DIBOAS_DRAIN_SECONDS="3",
                       DIBOAS_TRACING="on")


def run_service(name: str, env: dict, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"services.{name}"], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_port_in_use_is_a_clear_error(env):
    host, port = env["DIBOAS_WALLET_ADDRESS"].split(":")
    with socket.socket() as squatter:
        squatter.bind((host, int(port)))
        squatter.listen()
        result = run_service("wallet", env)
    assert result.returncode == 2
    assert f"cannot listen on {host}:{port}" in result.stderr
    assert "DIBOAS_WALLET_ADDRESS" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_certificate_is_a_clear_error(env, tmp_path):
    env["DIBOAS_CERTS_DIR"] = str(tmp_path / "nowhere")
    result = run_service("wallet", env)
    assert result.returncode == 2
    assert "wallet.crt is missing: run `make certs`" in result.stderr or "ca.crt is missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_address_is_a_clear_error(env):
    env["DIBOAS_WALLET_ADDRESS"] = "localhost:http"
    result = run_service("wallet", env)
    assert result.returncode == 2
    assert "'localhost:http' is not a host:port address" in result.stderr
    assert "DIBOAS_WALLET_ADDRESS" in result.stderr
    assert "Traceback" not in result.stderr


def test_topology_errors_name_the_problem(tmp_path):
    bad = tmp_path / "mesh.yaml"
    bad.write_text("services:\n  wallet:\n    address: 127.0.0.1:1\n    upstreams: [ledger]\n")
    with pytest.raises(ConfigError, match="upstreams names 'ledger', which is not a service"):
        load_topology(bad)
    bad.write_text("services:\n  wallet:\n    address: 127.0.0.1:1\n    policy:\n      GetWallet: [mallory]\n")
    with pytest.raises(ConfigError, match=r"policy.GetWallet names unknown callers \['mallory'\]"):
        load_topology(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_topology(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="between 2 and 5"):
        load_topology(env={"DIBOAS_RETRY_MAX_ATTEMPTS": "9"})


def test_sigterm_stops_the_service_cleanly(env):
    process = subprocess.Popen([sys.executable, "-m", "services.wallet"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_line(process, '"wallet listening on', 20)
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=15)[0]
    finally:
        process.kill()
    assert process.returncode == 0
    assert "NOT_SERVING, draining" in output and "wallet stopped" in output
    assert "Traceback" not in output


def _wait_for_line(process: subprocess.Popen, needle: str, timeout: float) -> str:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"never saw {needle!r}; output was:\n{''.join(seen)}")


@pytest.mark.slow
def test_make_run_starts_all_services_and_stops_on_ctrl_c(env):
    process = subprocess.Popen([sys.executable, "-m", "services.launcher"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output = _wait_for_line(process, "Press Ctrl-C to stop everything", 60)
        for name in (*SERVICES, "gateway"):
            assert f"ready    {name}" in output
        assert f"REST API     http://{env['DIBOAS_GATEWAY_HTTP']}" in output and "TOKEN=ey" in output
        process.send_signal(signal.SIGINT)
        output += process.communicate(timeout=30)[0]
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert "everything stopped" in output
    # A second run finds the ports free again.
    again = subprocess.Popen([sys.executable, "-m", "services.launcher"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_line(again, "Press Ctrl-C to stop everything", 60)
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=30)
    finally:
        again.kill()
    assert again.returncode == 0


def test_make_run_refuses_a_port_in_use(env):
    host, port = env["DIBOAS_PROVIDER_ADDRESS"].split(":")
    with socket.socket() as squatter:
        squatter.bind((host, int(port)))
        squatter.listen()
        result = subprocess.run([sys.executable, "-m", "services.launcher"], env=env, capture_output=True,
                                text=True, timeout=30)
    assert result.returncode == 2
    assert f"provider cannot listen on {host}:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_observability_settings_are_validated(tmp_path):
    for key, value, message in [
        ("DIBOAS_TRACE_EXPORT", "jaeger", "is not none, console, file or file:PATH"),
        ("DIBOAS_TRACE_SAMPLE_RATIO", "2", "must be between 0 and 1"),
        ("DIBOAS_LOG_LEVEL", "chatty", "is not DEBUG, INFO, WARNING or ERROR"),
        ("DIBOAS_TRACING", "maybe", "is not on/off"),
        ("DIBOAS_DEFAULT_DEADLINE", "soon", "is not a number"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_topology(env={key: value})


def test_spans_are_exported_to_a_file(env, tmp_path):
    spans = tmp_path / "spans.jsonl"
    env.update(DIBOAS_TRACE_EXPORT=f"file:{spans}")
    process = subprocess.Popen([sys.executable, "-m", "services.wallet"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_line(process, '"wallet listening on', 20)
        health = subprocess.run([sys.executable, "-m", "services.cli", "health"], env=env, capture_output=True,
                                text=True, timeout=20)
        assert "wallet       " in health.stdout and "SERVING" in health.stdout
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)
    finally:
        process.kill()
    lines = [json.loads(line) for line in spans.read_text().splitlines()]
    assert any(span["name"] == "/grpc.health.v1.Health/Check" for span in lines)
    assert all(span["resource"]["attributes"]["service.name"] == "wallet" for span in lines)


def test_token_lifetime_is_capped_in_the_cli(env):
    result = subprocess.run([sys.executable, "-m", "services.cli", "token", "--for", "wallet", "--ttl", "3600"],
                            env=env, capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert "--ttl must be between 1 and 600 seconds" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("key,value,message", [
    ("DIBOAS_RETRY_INITIAL_BACKOFF", "0", "must be a finite number greater than zero"),
    ("DIBOAS_DEFAULT_DEADLINE", "inf", "must be a finite number greater than zero"),
    ("DIBOAS_DEFAULT_DEADLINE", "nan", "must be a finite number greater than zero"),
    ("DIBOAS_BREAKER_FAIL_MAX", "0.5", "must be a whole number of at least 1"),
    ("DIBOAS_GATEWAY_RATE_LIMIT", "0.5", "gateway.rate_limit_per_second .* must be a whole number of at least 1"),
    ("DIBOAS_GATEWAY_ANONYMOUS_RATE_LIMIT_BURST", "0", "must be a whole number of at least 1, got 0"),
    ("DIBOAS_GATEWAY_RATE_LIMIT_USERS", "many", "is not a number"),
    ("DIBOAS_RETRY_MAX_BACKOFF", "0.01", "must not be below initial_backoff_seconds"),
    ("DIBOAS_RESTART_CRASH_LOOP_EXITS", "0", "crash_loop_exits .* must be a whole number of at least 1"),
    ("DIBOAS_RESTART_CRASH_LOOP_SECONDS", "0", "crash_loop_seconds .* must be a finite number greater than zero"),
    ("DIBOAS_RESTART_INITIAL_DELAY", "-1", "initial_delay_seconds .* must be a finite number zero or more"),
    ("DIBOAS_RESTART_INITIAL_DELAY", "60", "max_delay_seconds .* must not be below initial_delay_seconds"),
    ("DIBOAS_RESTART_MULTIPLIER", "0.5", "multiplier .* must be at least 1"),
    ("DIBOAS_RESTART_MAX_DELAY", "soon", "is not a number"),
])
def test_numbers_that_would_break_the_runtime_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_topology(env={key: value})


@pytest.mark.parametrize("database,message", [
    ("mysql://root@127.0.0.1/test", "only sqlite:/// and postgresql+psycopg:// are supported"),
    ("postgresql+nosuchdriver://x@127.0.0.1/test", "no driver for it"),
    ("sqlite:////proc/nope/x.db", "cannot create its folder"),
    ("not a url", "is not a valid SQLAlchemy URL"),
])
def test_bad_database_urls_are_clear_errors(env, database, message):
    env["DIBOAS_WALLET_DATABASE"] = database
    result = run_service("wallet", env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_topology_path_that_is_a_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_topology(tmp_path)


def test_callers_stop_before_the_services_they_call():
    from services.launcher import stop_order
    batches = stop_order(load_topology(env={}))
    assert batches[0] == ["transaction"]
    assert sorted(batches[1]) == ["blockchain", "compliance", "provider", "wallet"]


@pytest.mark.slow
def test_services_do_not_outlive_a_killed_launcher(env):
    process = subprocess.Popen([sys.executable, "-m", "services.launcher"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_line(process, "Press Ctrl-C to stop everything", 60)
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == len(SERVICES) + 1          # and the gateway (Envoy)
        process.kill()                                  # no chance to clean up
        process.wait(timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(int(pid)) for pid in children):
            time.sleep(0.2)
        assert not any(alive(int(pid)) for pid in children), "services outlived the launcher"
    finally:
        process.kill()


@pytest.mark.parametrize("command", [[], ["health"], ["token"], ["user-token"], ["dead-letters"],
                                     ["dead-letters", "list"], ["dead-letters", "replay"], ["faults"], ["watch"],
                                     ["screenings"], ["screenings", "list"], ["screenings", "review"], ["demo"]])
def test_every_cli_command_has_help(command):
    done = subprocess.run([sys.executable, "-m", "services.cli", *command, "--help"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and done.stdout.startswith("usage: diboas"), done.stderr
    assert len(done.stdout.splitlines()) > 3


@pytest.mark.parametrize("args, message", [
    (["screenings", "list", "--limit", "0"], "argument --limit: must be at least 1, not 0"),
    (["screenings", "review", "screenings/s1", "approve", "--reason", " "],
     "review: --reason is required (why, for the audit record)"),
    (["screenings", "review", "screenings/s1", "maybe", "--reason", "x"], "argument decision: invalid choice"),
])
def test_the_screenings_command_refuses_bad_usage_before_calling_anything(args, message):
    done = subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and message in done.stderr, done.stderr
