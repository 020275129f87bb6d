"""docs/guide-new-service.md followed once, as written, by a brand-new identity `reporting`: its
YAML merged into a copy of mesh.yaml, its commands run (`make certs` into a copy of the test PKI,
the set-up check), the real wallet started as a process with that topology, the guide's program
run as it stands, and then, through services.meshclient, a call the policy allows, one it does
not (PERMISSION_DENIED, with the message the guide shows), and a deadline that bounds a call.
Only the addresses and the certificates' directory are this test's own."""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.meshclient import DeadlineExceeded, MeshClient, PermissionDenied
from services.runtime.config import DEFAULT_TOPOLOGY, REPO_ROOT

from meshkit import mesh_processes, usd

pytestmark = pytest.mark.slow

GUIDE = REPO_ROOT / "docs" / "guide-new-service.md"


def guide_block(name: str) -> str:
    """The fenced block right after `<!-- guide: NAME -->` in the guide."""
    found = re.search(rf"<!-- guide: {name} -->\n```\w*\n(.*?)\n```", GUIDE.read_text(), re.S)
    assert found, f"the guide has no block '{name}'"
    return found.group(1)


def merged(base: dict, change: dict) -> dict:
    """`base` with `change` written over it, as a reader edits mesh.yaml: mappings merged key by key,
    anything else (a list, a value) replaced."""
    out = dict(base)
    for key, value in change.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def test_the_guide_has_every_step():
    for name in ("identity", "certificate", "policy", "check", "first call"):
        assert guide_block(name)
    assert "docs/guide-new-service.md" in (REPO_ROOT / "README.md").read_text()


async def test_a_new_identity_follows_the_guide(pki, tmp_path):
    # 1 and 3: the identity and its policy entry, into a copy of the topology.
    raw = yaml.safe_load(DEFAULT_TOPOLOGY.read_text())
    for step in ("identity", "policy"):
        raw = merged(raw, yaml.safe_load(guide_block(step)))
    topology_file = tmp_path / "mesh.yaml"
    topology_file.write_text(yaml.safe_dump(raw))
    certs = tmp_path / "certs"
    shutil.copytree(pki, certs)                 # the CA and the other identities, as `make certs` left them
    assert not (certs / "reporting.crt").exists()
    env = dict(os.environ, DIBOAS_TOPOLOGY=str(topology_file), DIBOAS_CERTS_DIR=str(certs))

    # 2: its certificate, with the guide's command.
    done = subprocess.run(["bash", "-c", guide_block("certificate")], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert re.search(r"issued\s+reporting\.crt", done.stdout) and "kept" in done.stdout, done.stdout

    state = tmp_path / "state"
    state.mkdir()
    async with mesh_processes(certs, state, "services", ("wallet",), DIBOAS_TOPOLOGY=str(topology_file)) as (
            topology, processes):
        env = processes["wallet"].env
        # The set-up check of step 3.
        check = subprocess.run(["bash", "-c", guide_block("check")], cwd=REPO_ROOT, env=env, capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, check.stderr
        assert "reporting: spiffe://diboas.local/client/reporting" in check.stdout
        assert f"may call wallet ({topology.services['wallet'].address}): GetWallet, ListWallets" in check.stdout

        # A wallet for the program to find, made by the operator (with the same package).
        async with MeshClient.from_topology("operator", env=env) as operator:
            admin = operator.stub("wallet", wallet_pb2_grpc.WalletServiceStub)
            alice = (await admin.CreateWallet(wallet_pb2.CreateWalletRequest(
                wallet=wallet_pb2.Wallet(owner_id="alice", currency_code="USD"), request_id="guide-a"))).wallet.name
            await admin.CreditWallet(wallet_pb2.CreditWalletRequest(wallet=alice, amount=usd("25.00"),
                                                                    request_id="guide-credit"))

        # 4: the first call, the guide's program as it stands, run from another directory.
        program = tmp_path / "reporting.py"
        program.write_text(guide_block("first call"))
        ran = subprocess.run([sys.executable, str(program)], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.split() == [alice, "alice", "25.00", "USD"]

        # Then, through the package in this process: allowed, refused, and bounded by a deadline.
        async with MeshClient.from_topology("reporting", env=env) as mesh:
            assert mesh.allowed() == {"wallet": ("GetWallet", "ListWallets")}
            wallets = mesh.stub("wallet", wallet_pb2_grpc.WalletServiceStub)
            assert (await wallets.GetWallet(wallet_pb2.GetWalletRequest(name=alice))).wallet.owner_id == "alice"

            with pytest.raises(PermissionDenied) as refused:
                await wallets.CreateWallet(wallet_pb2.CreateWalletRequest(
                    wallet=wallet_pb2.Wallet(owner_id="mallory", currency_code="USD"), request_id="guide-no"))
            assert refused.value.reason == "CALLER_NOT_PERMITTED"
            assert refused.value.message == "wallet: reporting may not call wallet.CreateWallet"
            assert refused.value.message in GUIDE.read_text()       # what the guide's troubleshooting shows

            # The wallet stops answering (SIGSTOP): the block's 0.5 s, not the 5 s default, ends the
            # call; once the budget is spent, a call of the block is not even sent.
            wallet_pid = processes["wallet"].process.pid
            os.kill(wallet_pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with mesh.deadline(0.5):
                    with pytest.raises(DeadlineExceeded):
                        await wallets.GetWallet(wallet_pb2.GetWalletRequest(name=alice))
                    waited = time.monotonic() - started
                    await asyncio.sleep(0.1)                    # the block's budget is spent now
                    with pytest.raises(DeadlineExceeded, match="no time left to call wallet"):
                        await wallets.ListWallets(wallet_pb2.ListWalletsRequest())
            finally:
                os.kill(wallet_pid, signal.SIGCONT)
            assert 0.4 < waited < 2.0, waited
            assert mesh.breaker_state("wallet") == "closed"          # one failure is not five
            assert (await wallets.GetWallet(wallet_pb2.GetWalletRequest(name=alice))).wallet.name == alice
