"""The body of every service's Alembic env.py: run the migrations on the connection that
`services.runtime.db.migrate` hands over."""
from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData


def _render_item(kind: str, item, autogen_context) -> bool:
    """Alembic renders a column type of ours (services.runtime.db.ExactDecimal ...) by its full
    dotted name: the migration it writes must import that module."""
    module = type(item).__module__
    if kind == "type" and module.startswith("services."):
        autogen_context.imports.add(f"import {module}")
    return False            # Alembic's own rendering


def run(target_metadata: MetaData) -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise SystemExit("migrations run through services.runtime.db.migrate (services migrate at start-up)")
    # render_as_batch: SQLite cannot ALTER most things; batch mode copies the table instead.
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", render_item=_render_item)
    with context.begin_transaction():
        context.run_migrations()
