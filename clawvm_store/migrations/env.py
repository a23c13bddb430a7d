"""Alembic environment for clawvm-store: runs on the connection handed in by ``Database.migrate``.

Each revision runs in its own transaction (``transaction_per_migration``) and DDL is declared
transactional: our connections emit ``BEGIN IMMEDIATE`` themselves, so on SQLite a failing revision
rolls back its DDL and its ``alembic_version`` update together.
"""

from __future__ import annotations

from alembic import context

from clawvm_store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("clawvm-store migrations run through Store.open / Database.migrate")

context.configure(
    connection=connection,
    target_metadata=metadata,
    transactional_ddl=True,
    transaction_per_migration=True,
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
