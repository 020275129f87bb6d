"""A saga that cannot finish, over the real services (in-process, real mTLS): its work item is
parked once the queue's retry policy is spent, the money stays held, the transaction says why,
`diboas dead-letters` lists it, and a replay after the fault is cleared completes it once."""
from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from decimal import Decimal

from diboas.blockchain.v1 import blockchain_pb2
from diboas.transaction.v1 import transaction_pb2
from services.runtime.config import BreakerPolicy, QueuePolicy

from conftest import with_service
from meshkit import start_mesh

PROCESSING = transaction_pb2.TRANSACTION_STATE_PROCESSING
COMPLETED = transaction_pb2.TRANSACTION_STATE_COMPLETED
QUICK = QueuePolicy(max_attempts=3, initial_backoff_seconds=0.05, max_backoff_seconds=0.2, max_age_seconds=3600)


def diboas(mesh, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=mesh.env, capture_output=True,
                          text=True, timeout=30)


async def polygon_faults(mesh, key: str, **faults) -> None:
    await mesh.chain("SetChainFaults", blockchain_pb2.SetChainFaultsRequest(
        chain="chains/polygon", faults=blockchain_pb2.ChainFaults(**faults), request_id=key))


async def get(mesh, name: str) -> transaction_pb2.Transaction:
    return (await mesh.transactions.GetTransaction(transaction_pb2.GetTransactionRequest(name=name),
                                                   metadata=mesh.as_gateway, timeout=10)).transaction


async def test_a_saga_that_cannot_finish_is_parked_holding_the_money_and_completes_after_a_replay(
        topology, start_server, database_url):
    topology = with_service(topology, "transaction", queues={"financial.transactions": QUICK})
    # The chains' breakers follow defaults.breaker: open after the hung mints, tried again after 1 s.
    topology = dataclasses.replace(topology, defaults=dataclasses.replace(
        topology.defaults, breaker=BreakerPolicy(fail_max=5, reset_timeout_seconds=1.0)))
    mesh = await start_mesh(topology, start_server, transaction=database_url)
    try:
        alice = await mesh.wallet("alice", "80.00")
        await polygon_faults(mesh, "down", timeout_rate_percent=100)   # the mint never answers: in progress
        created = await mesh.create("BRIDGE", "30.00", "stuck", source_wallet=alice, source_chain="chains/ethereum",
                                    target_chain="chains/polygon",
                                    destination_address="0x00000000000000000000000000000000000000aa")

        async def parked() -> bool:
            return (await get(mesh, created.name)).HasField("parked")
        assert await mesh.wait_until(parked, True, timeout=60)
        tx = await get(mesh, created.name)
        # An unknown outcome is never failed: still PROCESSING, nothing compensated, the money held.
        assert tx.state == PROCESSING and tx.failure_reason == "" and tx.cross_chain_transfer
        assert (tx.parked.attempts, tx.parked.reason) == (3, "MAX_ATTEMPTS")
        assert "in_progress" in tx.parked.last_error and tx.parked.HasField("park_time")
        listed = await mesh.transactions.ListTransactions(transaction_pb2.ListTransactionsRequest(wallet=alice),
                                                          metadata=mesh.as_gateway, timeout=10)
        assert [t.parked.dead_letter_id for t in listed.transactions] == [tx.parked.dead_letter_id]
        mine = (await mesh.transactions.GetTransaction(transaction_pb2.GetTransactionRequest(name=created.name),
                                                       metadata=mesh.as_user("alice"), timeout=10)).transaction
        assert mine.parked.attempts == 3 and mine.parked.last_error == ""   # the error is for operators
        assert await mesh.balances(alice) == (Decimal("50.00"), Decimal("30.00"))
        await asyncio.sleep(1.0)                                        # and it is not retried any more
        assert (await get(mesh, created.name)).parked == tx.parked

        listing = await asyncio.to_thread(diboas, mesh, "dead-letters", "list")
        assert listing.returncode == 0, listing.stderr
        line = f"work-item #{tx.parked.dead_letter_id}"
        assert line in listing.stdout and "financial.transactions" in listing.stdout
        assert created.name.removeprefix("transactions/") in listing.stdout and "3 attempt(s)" in listing.stdout

        await polygon_faults(mesh, "up")                                # the fault is cleared: once the
        # chain's breaker lets calls through again, the blockchain service finishes the transfer itself

        async def transfer_state():
            return (await mesh.chain("GetCrossChainTransfer", blockchain_pb2.GetCrossChainTransferRequest(
                name=tx.cross_chain_transfer))).cross_chain_transfer.state
        finished = blockchain_pb2.CROSS_CHAIN_TRANSFER_STATE_COMPLETED
        cleared = time.monotonic()
        assert await mesh.wait_until(transfer_state, finished, timeout=60) == finished
        # Within the configured reset (1 s) and the driver's next pass, not the default's 10 s.
        assert time.monotonic() - cleared < 8
        assert (await get(mesh, created.name)).state == PROCESSING      # the saga does not know: parked
        replay = await asyncio.to_thread(diboas, mesh, "dead-letters", "replay", "--kind", "work-item",
                                         str(tx.parked.dead_letter_id))
        assert replay.returncode == 0 and "replayed 1 dead letter(s)" in replay.stdout, replay.stderr
        again = await asyncio.to_thread(diboas, mesh, "dead-letters", "replay", "--kind", "work-item",
                                        str(tx.parked.dead_letter_id))
        assert again.returncode == 1 and "NOT_FOUND" in again.stderr  # replayed once: nothing waits

        done = await mesh.settled(created.name, timeout=60)
        assert done.state == COMPLETED and not done.HasField("parked") and len(done.chain_transactions) == 3
        await mesh.wait_until_settled([alice])
        assert await mesh.balances(alice) == (Decimal("50.00"), 0)   # 80 = 50 left + 30 bridged, once
        audit = (await asyncio.to_thread(diboas, mesh, "dead-letters", "list", "--all", "--kind", "work-item")).stdout
        assert line in audit and "replayed" in audit and "by operator" in audit
        assert "no dead letters" in (await asyncio.to_thread(diboas, mesh, "dead-letters", "list")).stdout
    finally:
        await mesh.close()
