"""A LangGraph checkpointer that keeps checkpoints in a clawvm-store database.

``ClawVMSaver`` is a :class:`langgraph.checkpoint.base.BaseCheckpointSaver`: pass it to
``graph.compile(checkpointer=...)`` as you would ``SqliteSaver``::

    from clawvm_store.integrations.langgraph import ClawVMSaver

    with ClawVMSaver.from_path("agent.db") as saver:
        graph = builder.compile(checkpointer=saver)
        graph.invoke(inputs, {"configurable": {"thread_id": "t-1"}})

What it adds over LangGraph's own SQLite saver:

* **The engine's durability protocol.** A task's pending writes are like staged updates: each
  ``put_writes`` is one short transaction at ``synchronous=NORMAL``, so it survives ``kill -9``
  the moment it returns. A checkpoint is like a boundary: ``put`` commits at ``synchronous=FULL``,
  and its fsync also makes every earlier pending write durable against power loss. Every write
  starts with ``BEGIN IMMEDIATE`` through the store's one transaction primitive.
* **Checksums.** Every checkpoint and pending-write row carries a SHA-256 of its identity and
  bytes; reads verify it (a damaged row raises :class:`~clawvm_store.CorruptDatabase` instead of
  handing a graph corrupt state) and ``store.check()`` / ``clawvm check`` report it.
* **SQL.** The views ``langgraph_threads``, ``langgraph_checkpoints`` and ``langgraph_writes``
  show every thread and checkpoint to ``clawvm sql``; step, source and run id are columns.
* **One file.** The agent's pages, journal and tool ledger live beside its graph checkpoints.

Idempotency follows LangGraph's savers: ``put`` replaces a checkpoint with the same id;
``put_writes`` keeps the first write for a (task, index) and replaces only the special channels
(errors, interrupts, scheduled, resume), as ``SqliteSaver`` does.

The async methods run the sync ones in a worker thread (``asyncio.to_thread``), so an event
loop never blocks on a disk flush.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import random
from collections import namedtuple
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from sqlalchemy import Connection, bindparam, delete, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from .. import _crashpoints
from .. import schema as t
from ..checkpoints import (
    checkpoint_checksum,
    checkpoint_row_checksum,
    checkpoint_row_problem,
    write_checksum,
    write_row_checksum,
    write_row_problem,
)
from ..db import Durability
from ..errors import CorruptDatabase, InvalidInput
from ..store import Store, utc_now

__all__ = ["ClawVMSaver"]

_CHECKPOINT_COLUMNS = (
    t.lg_checkpoints.c.thread_id,
    t.lg_checkpoints.c.checkpoint_ns,
    t.lg_checkpoints.c.checkpoint_id,
    t.lg_checkpoints.c.parent_checkpoint_id,
    t.lg_checkpoints.c.type,
    t.lg_checkpoints.c.checkpoint,
    t.lg_checkpoints.c.metadata,
    t.lg_checkpoints.c.checksum,
)


def _forget(*, threads: Sequence[str] = (), runs: Sequence[str] = ()) -> None:
    """Tell the crash-test kit, before a deletion starts, which acknowledged rows may go.

    Written before the transaction, not after: a kill during the deletion leaves it in flight
    (done or not), and the kit must not then demand the rows it may have removed.
    """
    if _crashpoints.ACTIVE:
        _crashpoints.ack("lg_forget", threads=list(threads), runs=list(runs))


def _configurable(config: RunnableConfig) -> dict[str, Any]:
    configurable = config.get("configurable")
    if not isinstance(configurable, dict) or configurable.get("thread_id") is None:
        raise InvalidInput("a LangGraph config needs configurable.thread_id")
    return configurable


def _thread_ns(config: RunnableConfig) -> tuple[str, str]:
    configurable = _configurable(config)
    return str(configurable["thread_id"]), str(configurable.get("checkpoint_ns") or "")


def _ref(thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": checkpoint_ns,
            "checkpoint_id": checkpoint_id,
        }
    }


def _matches(metadata: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(key in metadata and metadata[key] == value for key, value in wanted.items())


class _Prepared:
    """A statement compiled once for the store's dialect and run as driver SQL.

    A ``get_tuple`` runs two statements and a ``put`` one; building and cache-keying a Core
    statement on every call cost several times what SQLite takes to run it. Driver errors
    raised here still leave through the store's transaction, which translates them.
    """

    def __init__(self, statement: Any, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        selected = getattr(statement, "selected_columns", None)
        names = [column.name for column in selected] if selected is not None else ["unused"]
        self.row = namedtuple("Row", names)  # type: ignore[misc]
        self.sql = compiled.string
        self.positional = bool(compiled.positional)
        self.order = tuple(compiled.positiontup or ())
        # Values fixed in the statement itself (a LIMIT) travel as bound parameters too.
        self.fixed = {k: v for k, v in compiled.params.items() if v is not None}

    def rows(self, conn: Connection, **params: Any) -> builtins.list[Any]:
        """Every row, as named tuples, straight from the driver's cursor."""
        values = {**self.fixed, **params}
        bound: Any = tuple(values[name] for name in self.order) if self.positional else values
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self.sql, bound)
            return [self.row._make(found) for found in cursor.fetchall()]  # type: ignore[attr-defined]
        finally:
            cursor.close()

    def execute(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Run a write once per row of parameters."""
        if self.positional:
            bound: Any = [tuple(row[name] for name in self.order) for row in rows]
        else:
            bound = rows
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(self.sql, bound)
        finally:
            cursor.close()


class ClawVMSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer on a clawvm-store :class:`~clawvm_store.Store`.

    ``ClawVMSaver(store)`` uses an open store (the caller closes it);
    :meth:`from_path` opens one and closes it on exit. ``serde`` is LangGraph's serializer
    (default: ``JsonPlusSerializer``), as for every ``BaseCheckpointSaver``.
    """

    def __init__(self, store: Store, *, serde: SerializerProtocol | None = None) -> None:
        super().__init__(serde=serde)
        self.store = store
        db = store.db
        self._db = db
        insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert
        dialect = db.engine.dialect
        c, w = t.lg_checkpoints, t.lg_writes
        by_thread = select(*_CHECKPOINT_COLUMNS).where(
            c.c.thread_id == bindparam("thread_id"), c.c.checkpoint_ns == bindparam("ns")
        )
        self._latest = _Prepared(by_thread.order_by(c.c.checkpoint_id.desc()).limit(1), dialect)
        self._by_id = _Prepared(by_thread.where(c.c.checkpoint_id == bindparam("id")), dialect)
        self._writes_span = _Prepared(
            select(w).where(
                w.c.thread_id == bindparam("thread_id"),
                w.c.checkpoint_ns == bindparam("ns"),
                w.c.checkpoint_id >= bindparam("low"),
                w.c.checkpoint_id <= bindparam("high"),
            ),
            dialect,
        )
        checkpoint_keys = ["thread_id", "checkpoint_ns", "checkpoint_id"]
        write_keys = [*checkpoint_keys, "task_id", "idx"]
        # A put (and a copy) replaces a checkpoint with the same id, as LangGraph's savers do;
        # only its first created_at is kept.
        upsert = insert(c)
        self._put = _Prepared(
            upsert.on_conflict_do_update(
                index_elements=checkpoint_keys,
                set_={
                    col.name: upsert.excluded[col.name]
                    for col in c.columns
                    if not col.primary_key and col.name != "created_at"
                },
            ),
            dialect,
        )
        # Special channels (error, interrupt, ...) are replaced; ordinary writes are idempotent:
        # a task retried after a crash must not change what was already recorded.
        upsert = insert(w)
        self._write_replace = _Prepared(
            upsert.on_conflict_do_update(
                index_elements=write_keys,
                set_={
                    col.name: upsert.excluded[col.name] for col in w.columns if not col.primary_key
                },
            ),
            dialect,
        )
        self._write_keep = _Prepared(
            insert(w).on_conflict_do_nothing(index_elements=write_keys), dialect
        )

    @classmethod
    @contextmanager
    def from_path(
        cls,
        target: str,
        *,
        durability: Durability = "full",
        serde: SerializerProtocol | None = None,
    ) -> Iterator[ClawVMSaver]:
        """Open (creating and migrating) a store at a path or SQLAlchemy URL, yield a saver.

        Like ``SqliteSaver.from_conn_string``: the store is closed when the block exits.
        """
        with Store.open(target, durability=durability) as store:
            yield cls(store, serde=serde)

    # -- reads -----------------------------------------------------------------------------

    def _checkpoint_tuple(self, row: Any, write_rows: Sequence[Any]) -> CheckpointTuple:
        problem = checkpoint_row_problem(row)
        if problem:
            raise CorruptDatabase(
                f"LangGraph checkpoint {row.thread_id}/{row.checkpoint_ns}/{row.checkpoint_id}"
                f" fails its check: {problem}; run `clawvm check`"
            )
        parent = (
            _ref(row.thread_id, row.checkpoint_ns, row.parent_checkpoint_id)
            if row.parent_checkpoint_id
            else None
        )
        return CheckpointTuple(
            _ref(row.thread_id, row.checkpoint_ns, row.checkpoint_id),
            self.serde.loads_typed((row.type, bytes(row.checkpoint))),
            cast(CheckpointMetadata, json.loads(row.metadata)),
            parent,
            self._pending_writes(write_rows),
        )

    def _pending_writes(self, rows: Sequence[Any]) -> builtins.list[PendingWrite]:
        writes: builtins.list[PendingWrite] = []
        # LangGraph replays a super-step's writes in this order (writes_sort_key's contract).
        for row in sorted(rows, key=lambda r: writes_sort_key(r.task_path, r.task_id, r.idx)):
            problem = write_row_problem(row)
            if problem:
                raise CorruptDatabase(
                    f"LangGraph pending write {row.thread_id}/{row.checkpoint_ns}/"
                    f"{row.checkpoint_id} task {row.task_id} #{row.idx} fails its check:"
                    f" {problem}; run `clawvm check`"
                )
            writes.append((row.task_id, row.channel, self.serde.loads_typed((row.type, row.value))))
        return writes

    def _writes_of(
        self, conn: Connection, keys: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], builtins.list[Any]]:
        """The pending-write rows of many checkpoints, grouped by checkpoint.

        One query per (thread, namespace), over the span of listed checkpoint ids: a listing
        is usually one thread's newest checkpoints, so this reads little beyond what it needs.
        """
        grouped: dict[tuple[str, str, str], builtins.list[Any]] = {key: [] for key in keys}
        spans: dict[tuple[str, str], builtins.list[str]] = {}
        for thread_id, checkpoint_ns, checkpoint_id in keys:
            spans.setdefault((thread_id, checkpoint_ns), []).append(checkpoint_id)
        for (thread_id, checkpoint_ns), ids in spans.items():
            rows = self._writes_span.rows(
                conn, thread_id=thread_id, ns=checkpoint_ns, low=min(ids), high=max(ids)
            )
            for row in rows:
                group = grouped.get((row.thread_id, row.checkpoint_ns, row.checkpoint_id))
                if group is not None:
                    group.append(row)
        return grouped

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint named by ``config`` (or the thread's latest), with its pending writes."""
        thread_id, checkpoint_ns = _thread_ns(config)
        checkpoint_id = get_checkpoint_id(config)
        with self._db.transaction(write=False) as conn:
            if checkpoint_id:
                found = self._by_id.rows(
                    conn, thread_id=thread_id, ns=checkpoint_ns, id=str(checkpoint_id)
                )
            else:
                # Checkpoint ids are UUIDv6: ordered by time, so the greatest is the latest.
                found = self._latest.rows(conn, thread_id=thread_id, ns=checkpoint_ns)
            if not found:
                return None
            row = found[0]
            key = (row.thread_id, row.checkpoint_ns, row.checkpoint_id)
            write_rows = self._writes_of(conn, [key])[key]
        return self._checkpoint_tuple(row, write_rows)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first: of a thread (and namespace) or of all threads.

        ``filter`` keeps checkpoints whose metadata has each key with an equal value;
        ``before`` keeps those older than the given checkpoint; ``limit`` caps the count.
        All of it is read in one transaction, so the listing is one consistent snapshot.
        """
        if limit is not None and limit <= 0:
            return
        c = t.lg_checkpoints
        query = select(*_CHECKPOINT_COLUMNS)
        if config is not None:
            configurable = _configurable(config)
            query = query.where(c.c.thread_id == str(configurable["thread_id"]))
            if configurable.get("checkpoint_ns") is not None:
                query = query.where(c.c.checkpoint_ns == str(configurable["checkpoint_ns"]))
            if checkpoint_id := get_checkpoint_id(config):
                query = query.where(c.c.checkpoint_id == str(checkpoint_id))
        if before is not None and (before_id := get_checkpoint_id(before)):
            query = query.where(c.c.checkpoint_id < str(before_id))
        query = query.order_by(c.c.checkpoint_id.desc(), c.c.thread_id, c.c.checkpoint_ns)
        # Metadata filters are applied here, not in SQL, so they mean the same on every backend
        # (JSON equality, nested values included); without one, the database applies the limit.
        if not filter and limit is not None:
            query = query.limit(limit)
        chosen: builtins.list[Any] = []
        with self._db.transaction(write=False) as conn:
            for row in conn.execute(query):
                if filter and not _matches(json.loads(row.metadata), filter):
                    continue
                chosen.append(row)
                if limit is not None and len(chosen) >= limit:
                    break
            write_rows = self._writes_of(
                conn, [(row.thread_id, row.checkpoint_ns, row.checkpoint_id) for row in chosen]
            )
        for row in chosen:
            key = (row.thread_id, row.checkpoint_ns, row.checkpoint_id)
            yield self._checkpoint_tuple(row, write_rows[key])

    # -- writes ----------------------------------------------------------------------------

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint (a boundary: committed at ``synchronous=FULL``); return its config."""
        thread_id, checkpoint_ns = _thread_ns(config)
        parent_id = _configurable(config).get("checkpoint_id")
        parent = str(parent_id) if parent_id else None
        type_, blob = self.serde.dumps_typed(checkpoint)
        meta = get_serializable_checkpoint_metadata(config, metadata)
        meta_json = json.dumps(meta, ensure_ascii=False, default=str)
        step = meta.get("step")
        source = meta.get("source")
        run_id = meta.get("run_id")
        checkpoint_id = str(checkpoint["id"])
        row = {
            "thread_id": thread_id,
            "checkpoint_ns": checkpoint_ns,
            "checkpoint_id": checkpoint_id,
            "parent_checkpoint_id": parent,
            "run_id": None if run_id is None else str(run_id),
            "step": step if isinstance(step, int) and not isinstance(step, bool) else None,
            "source": source if isinstance(source, str) else None,
            "type": type_,
            "checkpoint": blob,
            "metadata": meta_json,
            "checksum": checkpoint_checksum(
                thread_id, checkpoint_ns, checkpoint_id, parent, type_, blob, meta_json
            ),
            "created_at": utc_now(),
        }
        with self._db.transaction(sync="full") as conn:
            self._put.execute(conn, [row])
        if _crashpoints.ACTIVE:  # the crash-test kit: acknowledged once this line is written
            _crashpoints.ack(
                "lg_checkpoint",
                thread=thread_id,
                ns=checkpoint_ns,
                checkpoint=checkpoint_id,
                run_id=row["run_id"],
                checksum=row["checksum"],
            )
        return _ref(thread_id, checkpoint_ns, checkpoint_id)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes against a checkpoint (staged: ``synchronous=NORMAL``).

        Survives ``kill -9`` once this returns, and power loss from the next ``put`` on.
        """
        if not writes:
            return
        thread_id, checkpoint_ns = _thread_ns(config)
        checkpoint_id = get_checkpoint_id(config)
        if not checkpoint_id:
            raise InvalidInput("put_writes needs configurable.checkpoint_id")
        now = utc_now()
        rows = []
        for position, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, position)
            type_, blob = self.serde.dumps_typed(value)
            rows.append(
                {
                    "thread_id": thread_id,
                    "checkpoint_ns": checkpoint_ns,
                    "checkpoint_id": str(checkpoint_id),
                    "task_id": task_id,
                    "idx": idx,
                    "task_path": task_path,
                    "channel": channel,
                    "type": type_,
                    "value": blob,
                    "checksum": write_checksum(
                        thread_id,
                        checkpoint_ns,
                        str(checkpoint_id),
                        task_id,
                        idx,
                        task_path,
                        channel,
                        type_,
                        blob,
                    ),
                    "created_at": now,
                }
            )
        special = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        with self._db.transaction(sync="normal") as conn:
            (self._write_replace if special else self._write_keep).execute(conn, rows)
        if _crashpoints.ACTIVE:
            _crashpoints.ack(
                "lg_writes",
                thread=thread_id,
                ns=checkpoint_ns,
                checkpoint=str(checkpoint_id),
                task=task_id,
                special=special,
                writes=[[row["idx"], row["channel"], row["checksum"]] for row in rows],
            )

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint and pending write of a thread (all namespaces)."""
        thread = str(thread_id)
        _forget(threads=[thread])
        with self._db.transaction() as conn:
            conn.execute(delete(t.lg_writes).where(t.lg_writes.c.thread_id == thread))
            conn.execute(delete(t.lg_checkpoints).where(t.lg_checkpoints.c.thread_id == thread))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints made by these runs (metadata ``run_id``) and their writes."""
        wanted = sorted({str(run_id) for run_id in run_ids})
        if not wanted:
            return
        _forget(runs=wanted)
        c = t.lg_checkpoints
        with self._db.transaction() as conn:
            doomed = conn.execute(
                select(c.c.thread_id, c.c.checkpoint_ns, c.c.checkpoint_id).where(
                    c.c.run_id.in_(wanted)
                )
            ).all()
            self._delete_checkpoints(conn, [tuple(row) for row in doomed])

    def _delete_checkpoints(self, conn: Connection, keys: builtins.list[tuple[Any, ...]]) -> None:
        c, w = t.lg_checkpoints, t.lg_writes
        # Chunked: SQLite caps the number of bound parameters in one statement.
        for start in range(0, len(keys), 300):
            chunk = keys[start : start + 300]
            conn.execute(
                delete(w).where(
                    tuple_(w.c.thread_id, w.c.checkpoint_ns, w.c.checkpoint_id).in_(chunk)
                )
            )
            conn.execute(
                delete(c).where(
                    tuple_(c.c.thread_id, c.c.checkpoint_ns, c.c.checkpoint_id).in_(chunk)
                )
            )

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint and pending write of one thread to another, in one transaction.

        The whole parent chain is copied (LangGraph's DeltaChannel needs it); each source row is
        verified first, and the copies get checksums of their own.
        """
        source, target = str(source_thread_id), str(target_thread_id)
        if source == target:
            return
        c, w = t.lg_checkpoints, t.lg_writes
        now = utc_now()
        _forget(threads=[target])  # the copy replaces rows of the target thread
        with self._db.transaction() as conn:
            checkpoints = conn.execute(select(c).where(c.c.thread_id == source)).all()
            writes = conn.execute(select(w).where(w.c.thread_id == source)).all()
            # Every source row is verified before anything is copied; the copies are re-summed
            # under the target thread, whose id the checksum covers.
            copied: dict[str, builtins.list[dict[str, Any]]] = {"checkpoints": [], "writes": []}
            for kind, rows, problem_of, checksum_of in (
                ("checkpoints", checkpoints, checkpoint_row_problem, checkpoint_row_checksum),
                ("writes", writes, write_row_problem, write_row_checksum),
            ):
                for row in rows:
                    if problem := problem_of(row):
                        raise CorruptDatabase(
                            f"cannot copy a {kind[:-1]} of {source}/{row.checkpoint_ns}/"
                            f"{row.checkpoint_id}: {problem}"
                        )
                    copy = row._asdict()
                    copy.update(
                        thread_id=target,
                        created_at=now,
                        checksum=checksum_of(row, thread_id=target),
                    )
                    copied[kind].append(copy)
            copied_checkpoints, copied_writes = copied["checkpoints"], copied["writes"]
            # The copy replaces whatever the target thread held under the same ids.
            self._put.execute(conn, copied_checkpoints)
            self._write_replace.execute(conn, copied_writes)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Prune threads: ``keep_latest`` keeps each namespace's newest checkpoint (with its
        pending writes); ``delete`` removes everything of those threads.
        """
        if strategy not in ("keep_latest", "delete"):
            raise InvalidInput(
                f"unknown prune strategy {strategy!r}; expected keep_latest or delete"
            )
        threads = sorted({str(thread_id) for thread_id in thread_ids})
        if not threads:
            return
        _forget(threads=threads)
        c = t.lg_checkpoints
        with self._db.transaction() as conn:
            if strategy == "delete":
                conn.execute(delete(t.lg_writes).where(t.lg_writes.c.thread_id.in_(threads)))
                conn.execute(delete(c).where(c.c.thread_id.in_(threads)))
                return
            rows = conn.execute(
                select(c.c.thread_id, c.c.checkpoint_ns, c.c.checkpoint_id).where(
                    c.c.thread_id.in_(threads)
                )
            ).all()
            latest: dict[tuple[str, str], str] = {}
            for thread_id, checkpoint_ns, checkpoint_id in rows:
                key = (thread_id, checkpoint_ns)
                if checkpoint_id > latest.get(key, ""):
                    latest[key] = checkpoint_id
            doomed = [
                (thread_id, checkpoint_ns, checkpoint_id)
                for thread_id, checkpoint_ns, checkpoint_id in rows
                if latest[(thread_id, checkpoint_ns)] != checkpoint_id
            ]
            self._delete_checkpoints(conn, doomed)

    # -- async: the same work in a worker thread ------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Async :meth:`get_tuple`."""
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Async :meth:`list`."""
        found = await asyncio.to_thread(
            lambda: builtins.list(self.list(config, filter=filter, before=before, limit=limit))
        )
        for item in found:
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Async :meth:`put`."""
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Async :meth:`put_writes`."""
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        """Async :meth:`delete_thread`."""
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Async :meth:`delete_for_runs`."""
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Async :meth:`copy_thread`."""
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Async :meth:`prune`."""
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)

    def get_next_version(self, current: str | None, channel: None) -> str:
        """The next channel version: a zero-padded counter plus a random tiebreak.

        The same scheme as LangGraph's own SQL savers, so versions compare as strings and two
        forks of one thread never mint the same version.
        """
        if current is None:
            current_version = 0
        elif isinstance(current, int):
            current_version = current
        else:
            current_version = int(current.split(".")[0])
        return f"{current_version + 1:032}.{random.random():016}"
