"""Write a service's next Alembic migration from the difference between its tables.py and the
schema its existing migrations make.

    python -m tools.migration SERVICE "what changes"     (make migration SERVICE=notes MESSAGE="...")

The existing migrations run on a scratch SQLite database; Alembic's autogenerate compares the
result with services/SERVICE/tables.py and writes services/SERVICE/migrations/versions/NNNN_<slug>.py
(numbered after the last one). Read it before committing: autogenerate cannot see every change
(a renamed column reads as one dropped and one added).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config

from services.runtime.db import make_engine, migrate

ROOT = Path(__file__).resolve().parent.parent


def next_revision(versions: Path) -> str:
    numbers = [int(p.name[:4]) for p in versions.glob("[0-9][0-9][0-9][0-9]_*.py")]
    return f"{max(numbers, default=0) + 1:04d}"


def new_migration(service: str, message: str, root: Path = ROOT) -> Path:
    """Write the next migration of `service`; returns its path."""
    migrations = root / "services" / service / "migrations"
    if not (migrations / "env.py").exists():
        raise SystemExit(f"migration: {migrations}/env.py is missing (copy the wallet's, naming {service}'s tables)")
    versions = migrations / "versions"
    versions.mkdir(exist_ok=True)
    revision = next_revision(versions)
    with tempfile.TemporaryDirectory(prefix="diboas-migration-") as tmp:
        engine = make_engine(f"sqlite:///{tmp}/schema.db")
        try:
            migrate(engine, migrations)
            config = Config()
            config.set_main_option("script_location", str(migrations))
            with engine.begin() as connection:
                config.attributes["connection"] = connection
                script = command.revision(config, message, autogenerate=True, rev_id=revision)
        finally:
            engine.dispose()
    # Alembic's template leaves unsorted imports and a trailing space, which the lint refuses.
    subprocess.run([sys.executable, "-m", "ruff", "check", "--quiet", "--config", str(ROOT / "pyproject.toml"),
                    "--fix", "--unsafe-fixes", script.path], check=False)
    return Path(script.path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.migration", description=__doc__.split("\n")[0])
    parser.add_argument("service", help="a service of the topology, e.g. notes")
    parser.add_argument("message", help="what the migration does, e.g. \"notes, idempotency keys\"")
    args = parser.parse_args(argv)
    path = new_migration(args.service, args.message)
    print(f"migration: wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
