"""LangGraph checkpoint rows: their checksums, and how ``check()`` verifies them.

Kept apart from :mod:`clawvm_store.integrations.langgraph` so that ``Store.check()`` can verify
checkpoint rows without importing LangGraph. A checksum covers the row's identity and its stored
bytes, so a checkpoint that was damaged on disk, or whose bytes ended up under another key, is
refused on read and reported by ``check()``, never handed to a graph.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, select

from . import schema as t


def _digest(*parts: str | bytes | None) -> str:
    """SHA-256 over fields joined unambiguously: each is length-prefixed (None differs from '')."""
    digest = hashlib.sha256()
    for part in parts:
        if part is None:
            digest.update(b"-")
            continue
        data = part if isinstance(part, bytes) else part.encode("utf-8", "surrogatepass")
        digest.update(b"%d:" % len(data))
        digest.update(data)
    return digest.hexdigest()


def checkpoint_checksum(
    thread_id: str,
    checkpoint_ns: str,
    checkpoint_id: str,
    parent_checkpoint_id: str | None,
    type_: str,
    blob: bytes,
    metadata: str,
) -> str:
    """SHA-256 of a checkpoint row: identity, parent, serializer type, bytes and metadata."""
    return _digest(
        thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type_, blob, metadata
    )


def write_checksum(
    thread_id: str,
    checkpoint_ns: str,
    checkpoint_id: str,
    task_id: str,
    idx: int,
    task_path: str,
    channel: str,
    type_: str,
    blob: bytes,
) -> str:
    """SHA-256 of a pending-write row: identity, task, channel, serializer type and bytes."""
    return _digest(
        thread_id, checkpoint_ns, checkpoint_id, task_id, str(idx), task_path, channel, type_, blob
    )


def checkpoint_row_checksum(row: Any, *, thread_id: str | None = None) -> str:
    """The checksum a stored checkpoint row should carry (under ``thread_id``, for a copy)."""
    return checkpoint_checksum(
        row.thread_id if thread_id is None else thread_id,
        row.checkpoint_ns,
        row.checkpoint_id,
        row.parent_checkpoint_id,
        row.type,
        bytes(row.checkpoint),
        row.metadata,
    )


def write_row_checksum(row: Any, *, thread_id: str | None = None) -> str:
    """The checksum a stored pending-write row should carry (under ``thread_id``, for a copy)."""
    return write_checksum(
        row.thread_id if thread_id is None else thread_id,
        row.checkpoint_ns,
        row.checkpoint_id,
        row.task_id,
        row.idx,
        row.task_path,
        row.channel,
        row.type,
        bytes(row.value),
    )


def checkpoint_row_problem(row: Any) -> str | None:
    """Why a stored checkpoint row cannot be trusted, or None when its checksum verifies."""
    if not isinstance(row.checkpoint, bytes | memoryview):
        return "checkpoint is not stored as bytes"
    if checkpoint_row_checksum(row) != row.checksum:
        return "checksum does not match"
    return None


def write_row_problem(row: Any) -> str | None:
    """Why a stored pending-write row cannot be trusted, or None when its checksum verifies."""
    if not isinstance(row.value, bytes | memoryview):
        return "value is not stored as bytes"
    if write_row_checksum(row) != row.checksum:
        return "checksum does not match"
    return None


def damaged_rows(conn: Connection, checked: dict[str, int]) -> Iterator[tuple[str, str]]:
    """Every checkpoint and pending-write row whose checksum fails, as (kind, description)."""
    count = 0
    for row in conn.execute(select(t.lg_checkpoints)):
        count += 1
        problem = checkpoint_row_problem(row)
        if problem:
            yield (
                "langgraph_checkpoint",
                f"checkpoint {row.thread_id}/{row.checkpoint_ns}/{row.checkpoint_id}: {problem}",
            )
    checked["langgraph_checkpoints"] = count
    count = 0
    for row in conn.execute(select(t.lg_writes)):
        count += 1
        problem = write_row_problem(row)
        if problem:
            yield (
                "langgraph_write",
                f"pending write {row.thread_id}/{row.checkpoint_ns}/{row.checkpoint_id}"
                f" task {row.task_id} #{row.idx}: {problem}",
            )
    checked["langgraph_writes"] = count
