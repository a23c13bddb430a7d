"""Alembic environment for clawvm-store: runs on the connection handed in by ``Database.migrate``.

Each revision runs in its own transaction (``transaction_per_migration``) and DDL is declared
transactional: our connections emit ``BEGIN IMMEDIATE`` themselves, so on SQLite a failing revision
rolls back its DDL and its ``alembic_version`` update together.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo

from clawvm_store.schema import include_name, metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("clawvm-store migrations run through Store.open / Database.migrate")


def check_foreign_keys(
    ctx: MigrationContext, step: MigrationInfo, heads: Collection[Any], run_args: Mapping[str, Any]
) -> None:
    """Fail the revision, inside its own transaction, if it left a dangling reference.

    Migrations run with foreign keys off (so batch mode can rebuild referenced tables); this
    check keeps every revision as strict as the constraints would have been.
    """
    conn = ctx.connection
    if conn is None or conn.dialect.name != "sqlite":
        return
    dangling = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if dangling:
        raise RuntimeError(f"revision left dangling foreign keys: {dangling[:5]}")


context.configure(
    connection=connection,
    target_metadata=metadata,
    transactional_ddl=True,
    transaction_per_migration=True,
    render_as_batch=True,
    on_version_apply=check_foreign_keys,
    include_name=include_name,
)
with context.begin_transaction():
    context.run_migrations()
