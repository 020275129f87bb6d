"""What one small unit of work costs through `Database.run`, in one process, on a SQLite file.

    .venv/bin/python -m bench.db_units [--units 6000] [--concurrency 16] [--wallets 1000]
                                        [--output bench/results/db_units.json]

A wallet database (the wallet service's own migrations and repository) with --wallets wallets;
then --concurrency coroutines on one event loop run --units units each way, and the run prints
the CPU time of the process per unit (every thread: the loop's and the database's) and units
per second:
  read, on the loop       one indexed SELECT (get_wallet), called on the event loop itself
  read, Database.run      the same read unit, through Database.run
  write, Database.run     a write unit: the wallet read, then its balances written back
Each measurement runs twice and the second is reported (the first warms the caches). This is
the hop that every unit of work of the services pays (docs/benchmarks.md, "One database thread,
in batches"). Then single statements, on one connection in one transaction, each way:
  Connection.execute      SQLAlchemy's execution of the statement built once
  Prepared                the same statement prepared (services/runtime/prepared.py)
for the wallet's balance update, a read of one wallet and a read of two (docs/benchmarks.md,
"Statements without the execution context"). Results, with the conditions:
bench/results/db_units.json.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sqlite3
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Callable

from sqlalchemy import bindparam, select, update

from services.runtime.db import Database, param
from services.runtime.prepared import Prepared
from services.wallet.app import MIGRATIONS
from services.wallet.ledger import Wallet
from services.wallet.repository import WalletRepository
from services.wallet.tables import wallets

from .stats import cpu_model, git


def read_unit(db: Database, wallet_id: str) -> Wallet | None:
    with db.reading() as connection:
        return WalletRepository(connection).get_wallet(wallet_id)


def write_unit(db: Database, wallet_id: str) -> None:
    with db.transaction() as connection:
        repo = WalletRepository(connection)
        repo.save_balances(repo.get_wallet(wallet_id))


async def drive(db: Database, unit: Callable[[Database, str], object], on_loop: bool, units: int,
                concurrency: int, wallets: int) -> None:
    numbers = iter(range(units))

    async def caller() -> None:
        for n in numbers:
            wallet_id = f"w{n % wallets}"
            if on_loop:
                unit(db, wallet_id)
            else:
                await db.run(unit, db, wallet_id)
    await asyncio.gather(*(caller() for _ in range(concurrency)))


def measure(db: Database, unit: Callable, on_loop: bool, args: argparse.Namespace) -> tuple[float, float]:
    """CPU ms per unit and units per second, of the second of two runs."""
    for _ in range(2):
        cpu, wall = time.process_time(), time.perf_counter()
        asyncio.run(drive(db, unit, on_loop, args.units, args.concurrency, args.wallets))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / args.units * 1e3, args.units / wall


W = wallets.c
SAVE = update(wallets).where(W.id == param(W.id)).values(available=param(W.available), held=param(W.held),
                                                         updated_at=param(W.updated_at))
ONE = select(wallets).where(W.id == param(W.id))
TWO_EXPANDING = select(wallets).where(W.id.in_(bindparam("ids", expanding=True))).order_by(W.id)
TWO_FIXED = select(wallets).where(W.id.in_([param(W.id, "id_0"), param(W.id, "id_1")])).order_by(W.id)


def statements(db: Database, calls: int, count: int) -> list[dict]:
    """µs of CPU per statement, each statement both ways, on one connection in one transaction."""
    now = dt.datetime.now(dt.timezone.utc)
    cases = [
        ("UPDATE a wallet's balances", SAVE, SAVE, lambda n: {"wallets_id": f"w{n % count}", "wallets_held": Decimal(0),
                                                              "wallets_available": Decimal(100), "wallets_updated_at": now}),
        ("SELECT one wallet", ONE, ONE, lambda n: {"wallets_id": f"w{n % count}"}),
        ("SELECT two wallets", TWO_EXPANDING, TWO_FIXED,
         lambda n: {"ids": [f"w{n % count}", f"w{(n + 1) % count}"], "id_0": f"w{n % count}", "id_1": f"w{(n + 1) % count}"}),
    ]
    found = []
    with db.engine.connect() as connection, connection.begin():
        for name, plain, fixed, values in cases:
            prepared = Prepared(fixed)
            ways = (("Connection.execute", lambda v, s=plain: connection.execute(s, v).all() if s.is_select
                     else connection.execute(s, v)),
                    ("Prepared", lambda v, p=prepared: p.run(connection, v)))
            for way, run in ways:
                for _ in range(2):
                    cpu = time.process_time()
                    for n in range(calls):
                        run(values(n))
                    cpu = time.process_time() - cpu
                print(f"  {name:28} {way:20} {cpu / calls * 1e6:7.1f} µs of CPU per statement", flush=True)
                found.append({"statement": name, "way": way, "cpu_us_per_statement": round(cpu / calls * 1e6, 2)})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--wallets", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=Path("bench/results/db_units.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        db = Database(f"sqlite:///{Path(folder) / 'wallet.db'}", MIGRATIONS)
        db.migrate()
        now = dt.datetime.now(dt.timezone.utc)
        with db.transaction() as connection:
            repo = WalletRepository(connection)
            for n in range(args.wallets):
                repo.add_wallet(Wallet(f"w{n}", f"owner{n}", "USD", Decimal(100), Decimal(0), now, now))
        print(f"SQLite, {args.wallets} wallets, {args.units} units at concurrency {args.concurrency}, one process")
        for name, unit, on_loop in (("read, on the loop", read_unit, True), ("read, Database.run", read_unit, False),
                                    ("write, Database.run", write_unit, False)):
            cpu, rate = measure(db, unit, on_loop, args)
            print(f"  {name:22} {cpu:6.3f} ms of CPU per unit  {rate:8.0f} units/s", flush=True)
            results.append({"unit": name, "cpu_ms_per_unit": round(cpu, 4), "units_per_second": round(rate)})
        print(f"single statements, {args.units} calls each way, one connection in one transaction")
        single = statements(db, args.units, args.wallets)
        db.close()
    conditions = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "cpus": os.cpu_count(),
                  "cpu": cpu_model(), "commit": git("rev-parse", "--short", "HEAD"), "python": sys.version.split()[0],
                  "sqlite": sqlite3.sqlite_version, "units": args.units, "concurrency": args.concurrency,
                  "wallets": args.wallets, "process": "one: the event loop and the database's own threads"}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"benchmark": "db_units", "conditions": conditions, "runs": results,
                                       "statements": single},
                                      indent=2) + "\n")
    print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
