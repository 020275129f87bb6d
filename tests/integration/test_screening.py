"""Compliance screening in the money path, over real mTLS servers with their real composition
roots (wallet, transaction, compliance), with work and events embedded or over RabbitMQ: a
transaction held by screening waits with nothing reserved, and moves or fails on the operator's
review; one refused by the sanctions list fails with nothing held; the user sees the decision
and a reason that names no rule."""
from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal

import pytest

from diboas.compliance.v1 import compliance_pb2 as C
from diboas.transaction.v1 import transaction_pb2 as T
from services.runtime.config import Messaging

from meshkit import start_mesh

LARGE = "12000.00"      # above tests/compliance.yaml's large-transaction limit (10000.00 USD): held


@pytest.fixture(params=["embedded", "rabbitmq"])
async def mesh(request, topology, start_server, database_url):
    if request.param == "rabbitmq":
        url = request.getfixturevalue("rabbitmq_url")
        topology = dataclasses.replace(topology, messaging=Messaging("rabbitmq", url, "s"))
    mesh = await start_mesh(topology, start_server, ("wallet", "transaction", "compliance"), wallet=database_url)
    yield mesh
    await mesh.close()


async def read(mesh, name: str, metadata=None) -> T.Transaction:
    return (await mesh.transactions.GetTransaction(T.GetTransactionRequest(name=name),
                                                   metadata=metadata or mesh.as_gateway, timeout=10)).transaction


async def held(mesh, name: str, timeout: float = 20) -> T.Transaction:
    """The transaction once screening has held it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (tx := await read(mesh, name)).compliance.decision != T.COMPLIANCE_DECISION_HELD:
        assert asyncio.get_running_loop().time() < deadline, f"never held: {tx}"
        await asyncio.sleep(0.05)
    return tx


@pytest.mark.parametrize("approve", [True, False])
async def test_a_held_send_waits_with_nothing_reserved_and_moves_or_fails_on_review(mesh, approve):
    alice, bob = await mesh.wallet("alice", "20000.00"), await mesh.wallet("bob", "0")
    created = await mesh.send(alice, bob, LARGE, "large-1")
    tx = await held(mesh, created.name)
    assert (tx.state, tx.hold, tx.compliance.reason) == (T.TRANSACTION_STATE_PENDING, "", "held for a compliance review")
    await asyncio.sleep(1.5)                              # its item is looked at again meanwhile: still held
    assert (await read(mesh, created.name)).state == T.TRANSACTION_STATE_PENDING
    assert await mesh.balances(alice) == (Decimal("20000.00"), 0)       # nothing reserved while it waits
    screening = (await mesh.compliance("GetScreening", C.GetScreeningRequest(name=tx.compliance.screening))).screening
    assert (screening.transaction, screening.rule, screening.user_id) == (created.name, "large-transaction", "alice")

    await mesh.review(tx.compliance.screening, approve, "review-1")
    done = await mesh.settled(created.name, timeout=20)
    await mesh.wait_until_settled([alice, bob])
    if approve:
        assert (done.state, done.compliance.decision, done.compliance.reason) == (
            T.TRANSACTION_STATE_COMPLETED, T.COMPLIANCE_DECISION_APPROVED, "")
        assert await mesh.balances(alice) == (Decimal("8000.00"), 0)
        assert await mesh.balances(bob) == (Decimal("12000.00"), 0)
    else:
        assert (done.state, done.failure_reason, done.hold, done.compliance.decision) == (
            T.TRANSACTION_STATE_FAILED, "refused by a compliance review", "", T.COMPLIANCE_DECISION_REJECTED)
        assert await mesh.balances(alice) == (Decimal("20000.00"), 0)
        assert await mesh.balances(bob) == (0, 0)


async def test_a_send_to_a_sanctioned_owner_fails_with_nothing_held_and_the_user_sees_only_why(mesh):
    alice, listed = await mesh.wallet("alice", "100.00"), await mesh.wallet("sanctioned-demo-user", "0")
    created = await mesh.send(alice, listed, "5.00", "to-listed")
    done = await mesh.settled(created.name, timeout=20)
    assert (done.state, done.failure_reason, done.hold) == (
        T.TRANSACTION_STATE_FAILED, "refused by compliance screening (sanctions)", "")
    seen = await read(mesh, created.name, mesh.as_user("alice"))       # as alice, through the gateway's identity
    assert (seen.compliance.decision, seen.compliance.reason) == (
        T.COMPLIANCE_DECISION_REJECTED, "refused by compliance screening (sanctions)")
    assert "sanctioned-owners" not in str(seen) and "sanctions list" not in str(seen)
    screening = (await mesh.compliance("GetScreening", C.GetScreeningRequest(name=seen.compliance.screening))).screening
    assert screening.rule == "sanctioned-owners" and "on the sanctions list" in screening.explanation
    await mesh.wait_until_settled([alice, listed])
    assert await mesh.balances(alice) == (Decimal("100.00"), 0) and await mesh.balances(listed) == (0, 0)
