"""`make run` supervises, as real processes over real mTLS behind the real Envoy: each process (a
service's, or the monolith) and the gateway killed with SIGKILL under a load of SENDs comes back by itself and no money is created,
lost or left held; a crash loop is given up with a clear message while the rest keeps serving (the
gateway answers 503 with its JSON body for the given-up service); SIGUSR1 tries it again; and an
orderly stop does not restart a service that waits in backoff."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal

import pytest

from services.launcher import GATEWAY, OPERATOR
from services.monitor import check_gateway, check_service
from services.runtime.config import load_topology
from services.runtime.tls import load_identity

from conftest import user_token
from meshkit import MoneyClient, alive, process_env

pytestmark = pytest.mark.slow


class Launcher:
    """`python -m services.launcher`, its output read line by line as it comes."""

    def __init__(self, env: dict):
        self.process = subprocess.Popen([sys.executable, "-m", "services.launcher"], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self._reader.start()

    def output(self, since: int = 0) -> str:
        return "".join(self.lines[since:])

    async def wait_for(self, needle: str, timeout: float, since: int = 0) -> int:
        """The index of the first line from `since` on that contains `needle`."""
        deadline = time.monotonic() + timeout
        while True:
            for index in range(since, len(self.lines)):
                if needle in self.lines[index]:
                    return index
            assert time.monotonic() < deadline, f"never saw {needle!r}; the launcher said:\n{self.output()}"
            assert self.process.poll() is None, f"the launcher exited; it said:\n{self.output()}"
            await asyncio.sleep(0.05)

    def pid(self, name: str) -> int:
        """The pid of the last start or restart of `name` the launcher reported."""
        found = [int(m[1]) for line in self.lines if (m := re.match(rf"\s+(?:starting|restart)\s+{name}\s.*pid (\d+)",
                                                                     line))]
        assert found, f"no pid for {name} in:\n{self.output()}"
        return found[-1]

    def stop(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)


@pytest.fixture
def start_launcher():
    started = []

    def start(env: dict) -> Launcher:
        started.append(Launcher(env))
        return started[-1]
    yield start
    for launcher in started:
        launcher.kill()


def _topology(env: dict):
    return load_topology(env={k: v for k, v in env.items() if k.startswith("DIBOAS_")})


def rest_get(topology, path: str) -> tuple[int, dict]:
    """GET through the gateway as an operator-role user: the status and the JSON body."""
    request = urllib.request.Request(f"http://{topology.gateway.http}{path}",
                                     headers={"authorization": f"Bearer {user_token(topology)}"})
    try:
        with urllib.request.urlopen(request, timeout=15) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def health(topology, name: str) -> str:
    if name == GATEWAY:
        return (await check_gateway(topology, timeout=2)).status
    return (await check_service(topology, name, load_identity(topology.certs_dir, OPERATOR), timeout=2)).status


WALLETS, FUNDS, SENDS = 20, "100.00", 150


# The transaction service first: the sagas its dead process held come back when their work queue
# leases (30 s) expire, while the other rounds run.
VICTIMS = {"services": ("transaction", "wallet", "provider", "blockchain", GATEWAY),
           "monolith": ("monolith", GATEWAY)}


@pytest.mark.parametrize("mode", VICTIMS)
async def test_each_process_and_the_gateway_killed_under_load_comes_back_and_money_is_conserved(
        pki, tmp_path, start_launcher, mode):
    # A breaker opened by the outage closes again after a second (the default 10 s only slows the test).
    env = process_env(pki, tmp_path, DIBOAS_RESTART_INITIAL_DELAY="0.5", DIBOAS_BREAKER_RESET_TIMEOUT="1",
                      DIBOAS_MODE=mode)
    launcher = start_launcher(env)
    await launcher.wait_for("Press Ctrl-C to stop everything", 90)
    topology = _topology(env)
    money = MoneyClient(topology)
    try:
        names = await money.funded_wallets(WALLETS, FUNDS)
        for round_, victim in enumerate(VICTIMS[mode]):
            since = len(launcher.lines)
            burst = money.sends(names, SENDS, seed=round_, prefix=f"r{round_}-", concurrency=16)
            await money.under_way(burst, 20)
            pid = launcher.pid(victim)
            os.kill(pid, signal.SIGKILL)
            await launcher.wait_for(f"{victim} exited unexpectedly (killed by SIGKILL)", 10, since)
            await launcher.wait_for(f"restarting {victim} in 0.5s (attempt 1; 5 exits within 60s are a crash loop)",
                                    5, since)
            if victim in ("provider", "monolith"):   # meanwhile the gateway answers 503 for it, in JSON
                status, body = await asyncio.to_thread(rest_get, topology, "/v1/providers")
                assert status == 503 and body["code"] == 14 and body["message"], body
            await launcher.wait_for(f"ready    {victim:<12} SERVING again", 60, since)
            assert launcher.pid(victim) != pid and not alive(pid)
            for name in topology.processes.get(victim, (victim,)):      # the gateway, or a process's services
                assert await health(topology, name) == "SERVING"
            await burst
        txs = await money.assert_conserved(names, Decimal(FUNDS) * WALLETS, len(VICTIMS[mode]) * SENDS)
        assert len(txs) > SENDS, "too few SENDs were accepted to mean anything"
        status, body = await asyncio.to_thread(rest_get, topology, "/v1/providers")    # the new Envoy serves
        assert status == 200 and body["providers"], body
    finally:
        await money.close()
    assert launcher.stop() == 0, launcher.output()
    assert "everything stopped" in launcher.output()


async def test_a_crash_loop_is_given_up_the_rest_keeps_serving_and_sigusr1_tries_again(pki, tmp_path, start_launcher):
    certs = shutil.copytree(pki, tmp_path / "pki")       # this test breaks the provider's certificate
    env = process_env(certs, tmp_path / "state", DIBOAS_RESTART_INITIAL_DELAY="0.2", DIBOAS_RESTART_MULTIPLIER="20",
                      DIBOAS_RESTART_MAX_DELAY="60", DIBOAS_RESTART_CRASH_LOOP_EXITS="3")
    launcher = start_launcher(env)
    await launcher.wait_for("Press Ctrl-C to stop everything", 90)
    topology = _topology(env)

    # The provider's certificate goes missing, then the provider dies: every restart fails at once.
    (certs / "provider.crt").rename(certs / "provider.crt.away")
    os.kill(launcher.pid("provider"), signal.SIGKILL)
    given_up = await launcher.wait_for("CRASH LOOP: giving up on provider: it exited 3 times within 60s", 30)
    said = launcher.output()
    assert "provider exited unexpectedly (killed by SIGKILL)" in said
    assert "restarting provider in 0.2s (attempt 1;" in said and "restarting provider in 4.0s (attempt 2;" in said
    assert said.count("provider exited unexpectedly (exit code 2)") == 2 and "provider.crt is missing" in said
    assert "the gateway answers 503 for provider's routes" in said
    assert f"`kill -USR1 {launcher.process.pid}` to try it again" in said
    assert str(tmp_path / "state" / "logs" / "provider.log") in said

    # Given up: no more restarts; the rest keeps serving; the gateway answers 503 for the provider.
    await asyncio.sleep(1)
    assert "restart  provider" not in launcher.output(given_up)
    status, body = await asyncio.to_thread(rest_get, topology, "/v1/providers")
    assert status == 503 and body["code"] == 14 and body["message"], body
    status, body = await asyncio.to_thread(rest_get, topology, "/v1/chains")
    assert status == 200 and body["chains"], body
    assert [await health(topology, name) for name in ("wallet", "transaction", "blockchain")] == ["SERVING"] * 3

    # Fixed, and asked to try again.
    (certs / "provider.crt.away").rename(certs / "provider.crt")
    launcher.process.send_signal(signal.SIGUSR1)
    await launcher.wait_for("SIGUSR1: trying provider again", 10, given_up)
    await launcher.wait_for("ready    provider     SERVING again", 30, given_up)
    deadline = time.monotonic() + 20
    while (status := (await asyncio.to_thread(rest_get, topology, "/v1/providers"))[0]) != 200:
        assert time.monotonic() < deadline, f"the gateway still answers {status} for the provider"
        await asyncio.sleep(0.2)

    # An orderly stop while the blockchain service waits 4 s in backoff: it is not restarted.
    since = len(launcher.lines)
    os.kill(launcher.pid("blockchain"), signal.SIGKILL)
    await launcher.wait_for("ready    blockchain   SERVING again", 30, since)
    os.kill(pid := launcher.pid("blockchain"), signal.SIGKILL)
    waiting = await launcher.wait_for("restarting blockchain in 4.0s (attempt 2;", 10, since)
    started = time.monotonic()
    assert launcher.stop() == 0, launcher.output()
    assert time.monotonic() - started < 20
    after = launcher.output(waiting + 1)
    assert "restart  blockchain" not in after and launcher.pid("blockchain") == pid, after
    assert "everything stopped" in after
    started_pids = [launcher.pid(name) for name in ("wallet", "transaction", "provider", "blockchain", GATEWAY)]
    assert not [pid for pid in started_pids if alive(pid)], "a process outlived the stop"

