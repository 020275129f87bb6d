"""Composition root of the blockchain service."""
import os
from pathlib import Path

from diboas.blockchain.v1 import blockchain_pb2_grpc
from services.runtime.db import Database
from services.runtime.server import Registration, Runtime

from .catalog import chains_file, load_chains
from .coordinator import TransferCoordinator
from .registry import ChainRegistry
from .servicer import BlockchainServicer

MIGRATIONS = Path(__file__).parent / "migrations"


def build(runtime: Runtime) -> list[Registration]:
    db = Database(runtime.service.database, MIGRATIONS)
    db.migrate()
    runtime.on_stop.append(db.close)
    # The simulated chains' books live beside our state: the simulated world outlives a restart.
    breaker = runtime.topology.defaults.breaker
    registry = ChainRegistry(load_chains(chains_file(os.environ), runtime.topology.state_dir / "simulators" / "chains"),
                             breaker_fail_max=breaker.fail_max, breaker_reset_seconds=breaker.reset_timeout_seconds)
    coordinator = TransferCoordinator(db, registry)
    # Health checks on an interval; transfers left unfinished (a crash, a mint without answer) resumed.
    runtime.background += [registry.watch, coordinator.driver.resume]
    return [Registration(blockchain_pb2_grpc.add_BlockchainServiceServicer_to_server,
                         BlockchainServicer(registry, coordinator))]
