"""The relational layout, as SQLAlchemy Core tables.

This metadata is what the code reads and writes; the Alembic revisions in ``migrations/`` are
what creates it. A test compares the two (Alembic's autogenerate comparison) so they cannot
drift apart.

Identity of a page: ``(project, session_id, key)``, where ``session_id`` is the owning session for
a session-scoped page and the empty string for a project-scoped one.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

JOURNAL_STATES = ("staged", "committed", "rejected", "applied", "quarantined")

meta = Table(
    "meta",
    metadata,
    Column("name", String, primary_key=True),
    Column("value", Text, nullable=False),
)

projects = Table(
    "projects",
    metadata,
    Column("name", String, primary_key=True),
    # JSON list of principals allowed to write project-scoped pages; NULL means any principal.
    Column("writers", Text, nullable=True),
    Column("created_at", String, nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String, primary_key=True),
    Column("project", String, nullable=False),
    Column("principal", String, nullable=True),
    # host|pid|process start|store token of the process that has the session open.
    Column("owner", String, nullable=True),
    Column("state", String, nullable=False, server_default=text("'open'")),
    Column("turn", Integer, nullable=False, server_default=text("0")),
    Column("created_at", String, nullable=False),
    Column("updated_at", String, nullable=False),
    CheckConstraint("state IN ('open', 'closed')", name="state"),
)

pages = Table(
    "pages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project", String, nullable=False),
    Column("session_id", String, nullable=False, server_default=text("''")),
    Column("key", String, nullable=False),
    Column("type", String, nullable=False),
    Column("scope", String, nullable=False),
    Column("pin", String, nullable=False),
    Column("priority", Float, nullable=False, server_default=text("0")),
    Column("version", Integer, nullable=False),
    Column("provenance", Text, nullable=True),
    Column("deleted", Integer, nullable=False, server_default=text("0")),
    Column("created_at", String, nullable=False),
    Column("updated_at", String, nullable=False),
    # The derivation state of the head's structured fields (representations.Fold as JSON) when
    # the head extends a chain, so that the next append derives its fields from this state plus
    # its segment instead of re-reading the whole text. Only the head's is ever needed, so it is
    # kept here, once per page, not on every version (revision 0006 kept it per version; 0011
    # moved it). NULL: derive it from the head's text when an append first needs it.
    Column("fold", Text, nullable=True),
    UniqueConstraint("project", "session_id", "key"),
    Index("ix_pages_project_type", "project", "type"),
)

page_versions = Table(
    "page_versions",
    metadata,
    Column("page_id", Integer, ForeignKey("pages.id"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("type", String, nullable=False),
    Column("op", String, nullable=False),
    Column("pin", String, nullable=False),
    Column("priority", Float, nullable=False),
    Column("scope", String, nullable=False),
    Column("provenance", Text, nullable=True),
    Column("fields", Text, nullable=True),
    Column("content_hash", String, nullable=True),
    Column("deleted", Integer, nullable=False, server_default=text("0")),
    Column("lsn", Integer, nullable=False),
    Column("committed_at", String, nullable=False),
    # SHA-256 over the row's other columns (see journal.version_row_sha256); NULL only for rows
    # written before revision 0002.
    Column("row_sha256", String, nullable=True),
    Index("ix_page_versions_lsn", "lsn"),
)

representations = Table(
    "representations",
    metadata,
    Column("page_id", Integer, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("fidelity", String, primary_key=True),
    Column("content", Text, nullable=False),
    # Counted with the store's encoding (meta.encoding; one per store, revision 0014 dropped the
    # copy every row kept).
    Column("tokens", Integer, nullable=False),
    Column("source", String, nullable=False),
    # SHA-256 of ``content``; NULL only for rows written before revision 0002.
    Column("sha256", String, nullable=True),
    # Revision 0006, the append layout (segments.py): NULL means ``content`` is the whole text.
    # Otherwise the text is the text of the same fidelity at ``version - 1`` plus a newline plus
    # ``content`` (this version's piece), and the chain of pieces starts at ``chain_start``, the
    # version whose row holds a whole text. An append writes its segment, never a copy.
    Column("chain_start", Integer, nullable=True),
    # Set when this row's text (or, in a chain, its piece) is the one stored in the row of the
    # fidelity it names at the same version; ``content`` is then empty. Identical texts once.
    Column("same_as", String, nullable=True),
    ForeignKeyConstraint(
        ["page_id", "version"],
        ["page_versions.page_id", "page_versions.version"],
        name="fk_representations_page_versions",
    ),
    CheckConstraint("tokens >= 0", name="tokens"),
)

lifecycle_events = Table(
    "lifecycle_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String, nullable=True),
    Column("project", String, nullable=False),
    Column("boundary", String, nullable=False),
    Column("turn", Integer, nullable=False, server_default=text("0")),
    Column("committed", Integer, nullable=False, server_default=text("0")),
    Column("rejected", Integer, nullable=False, server_default=text("0")),
    Column("detail", Text, nullable=True),
    Column("at", String, nullable=False),
    Index("ix_lifecycle_events_session_id", "session_id", "id"),
)

journal = Table(
    "journal",
    metadata,
    Column("lsn", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String, nullable=False, server_default=text("''")),
    Column("project", String, nullable=False),
    Column("principal", String, nullable=True),
    Column("key", String, nullable=False),
    Column("op", String, nullable=False),
    Column("page_type", String, nullable=True),
    Column("scope", String, nullable=False),
    Column("payload", Text, nullable=False),
    Column("checksum", String, nullable=False),
    Column("state", String, nullable=False),
    Column("reason", String, nullable=True),
    Column("detail", Text, nullable=True),
    Column("idempotency_key", String, nullable=True),
    Column("event_id", Integer, ForeignKey("lifecycle_events.id"), nullable=True),
    Column("version", Integer, nullable=True),
    Column("staged_at", String, nullable=False),
    Column("resolved_at", String, nullable=True),
    CheckConstraint(
        "state IN ('staged', 'committed', 'rejected', 'applied', 'quarantined')", name="state"
    ),
    # Partial indexes (revision 0013): only pending entries are looked up by state, and a row
    # is looked up by its event only once it has one. So a stage touches one index besides the
    # table, a boundary takes each entry it resolves out of it, and the indexes stay as small
    # as what is pending instead of growing with the whole history.
    Index(
        "ix_journal_staged",
        "session_id",
        "lsn",
        sqlite_where=text("state = 'staged'"),
        postgresql_where=text("state = 'staged'"),
    ),
    Index(
        "ix_journal_committed",
        "lsn",
        sqlite_where=text("state = 'committed'"),
        postgresql_where=text("state = 'committed'"),
    ),
    Index(
        "ix_journal_event_id",
        "event_id",
        sqlite_where=text("event_id IS NOT NULL"),
        postgresql_where=text("event_id IS NOT NULL"),
    ),
    Index(
        "uq_journal_idempotency",
        "project",
        "session_id",
        "idempotency_key",
        unique=True,
        sqlite_where=text("idempotency_key IS NOT NULL"),
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
)

# The content of a journal entry that is not applied yet (staged, committed, rejected or set
# aside), one row per entry, deleted in the transaction that applies the entry: the version it
# made holds the content then. The journal row itself only ever holds the content's SHA-256
# (``content_sha256`` in its payload, under its checksum), so it never shrinks after it is
# written, and the B-tree pages of a long journal stay full instead of keeping the holes that
# shrinking rows leave; this table stays as small as what is pending (revision 0012).
journal_content = Table(
    "journal_content",
    metadata,
    Column("lsn", Integer, ForeignKey("journal.lsn"), primary_key=True, autoincrement=False),
    Column("content", Text, nullable=False),
)

# Assembly records cost the change (issue 14): each assembly records only what changed since
# the session's previous one, and every SNAPSHOT_EVERY-th (and the first of a session) records
# the whole prompt. The resident_by_turn view reconstructs every assembly's full record.

assemblies = Table(
    "assemblies",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String, nullable=False),
    Column("project", String, nullable=False),
    Column("turn", Integer, nullable=False),
    Column("budget", Integer, nullable=False),
    # The budget the selection used: the caller's, shrunk by the learned safety margin.
    Column("effective_budget", Integer, nullable=False),
    Column("fixed_tokens", Integer, nullable=False),
    Column("tokens", Integer, nullable=False),
    Column("feasible", Integer, nullable=False),
    # What the provider counted for this prompt, reported later by observe_usage().
    Column("observed_tokens", Integer, nullable=True),
    Column("text_sha256", String, nullable=False),
    Column("at", String, nullable=False),
    # 'snapshot': the items are the whole prompt (every resident page, plus the pages evicted
    # since the previous assembly). 'delta': only the pages that entered, changed or left since
    # the previous assembly of the session; the rest is as of the assemblies from base_id on.
    Column("kind", String, nullable=False, server_default=text("'snapshot'")),
    # The snapshot a delta builds on (this session's latest snapshot before it); NULL for one.
    Column("base_id", Integer, nullable=True),
    Index("ix_assemblies_session_id", "session_id", "id"),
)

assembly_items = Table(
    "assembly_items",
    metadata,
    Column("assembly_id", Integer, ForeignKey("assemblies.id"), primary_key=True),
    Column("page_id", Integer, ForeignKey("pages.id"), primary_key=True),
    Column("key", String, nullable=False),
    Column("version", Integer, nullable=False),
    # NULL for a page that left the prompt ('left': evicted; 'gone': no longer visible).
    Column("fidelity", String, nullable=True),
    Column("tokens", Integer, nullable=False),
    Column("reason", String, nullable=False),
    # Against the session's previous assembly: 'entered', 'kept' (snapshots only), 'changed'
    # (version, fidelity, tokens, reason or place), 'left' (evicted: the full record's
    # evicted-for-budget row), 'gone' (deleted, or shadowed by a session page: no row in a
    # full record, only the end of the page's residency).
    Column("change", String, nullable=False),
    # The page's place in the prompt: the view numbers resident pages by (sort_section,
    # sort_lsn, key), which is the render order (region, then the layout's slot).
    Column("sort_section", Integer, nullable=False),
    Column("sort_lsn", Integer, nullable=False),
    # On a 'left' row: the key of the page that gained the most tokens in that assembly (it
    # entered or rose in fidelity), i.e. what won the space; NULL when nothing gained.
    Column("won_by", String, nullable=True),
    CheckConstraint(
        "reason IN ('floor', 'pin', 'demand', 'upgrade', 'evicted-for-budget', 'gone')",
        name="reason",
    ),
    CheckConstraint(
        "change IN ('entered', 'kept', 'changed', 'left', 'gone')",
        name="change",
    ),
)

faults = Table(
    "faults",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String, nullable=True),
    Column("project", String, nullable=False),
    Column("turn", Integer, nullable=False),
    # A FaultKind value: the six faults, duplicate_signature alerts, physical_insufficiency.
    Column("kind", String, nullable=False),
    Column("key", String, nullable=True),
    Column("detail", Text, nullable=True),
    Column("at", String, nullable=False),
    Index("ix_faults_session_id_kind", "session_id", "kind"),
)

tool_calls = Table(
    "tool_calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String, nullable=False),
    Column("project", String, nullable=False),
    Column("turn", Integer, nullable=False),
    # Scoped per turn ("t3.2": the second call of turn 3): providers reuse ids like call_0.
    Column("call_id", String, nullable=False),
    Column("name", String, nullable=False),
    Column("args", Text, nullable=False),
    # SHA-256 of the tool name and the canonical JSON of its arguments.
    Column("signature", String, nullable=False),
    Column("effect", String, nullable=False),
    Column("resources", Text, nullable=False),
    Column("idempotency_key", String, nullable=True),
    Column("state", String, nullable=False),
    Column("result_key", String, nullable=True),
    Column("result_version", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("invalidated_at", String, nullable=True),
    Column("started_at", String, nullable=False),
    Column("finished_at", String, nullable=True),
    CheckConstraint("effect IN ('read', 'volatile', 'write', 'unknown')", name="effect"),
    CheckConstraint("state IN ('started', 'finished', 'failed', 'interrupted')", name="state"),
    UniqueConstraint("session_id", "call_id"),
    Index("ix_tool_calls_session_id_signature", "session_id", "signature"),
    Index(
        "uq_tool_calls_idempotency",
        "session_id",
        "idempotency_key",
        unique=True,
        sqlite_where=text("idempotency_key IS NOT NULL"),
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
)

# LangGraph checkpoints (clawvm_store.integrations.langgraph). A checkpoint and a task's pending
# writes are opaque blobs made by LangGraph's serializer; the columns beside them are what SQL
# needs (step, source, run id: copied out of the metadata at write time so the views need no
# JSON functions) and a SHA-256 over the stored bytes that reads and check() verify.
lg_checkpoints = Table(
    "lg_checkpoints",
    metadata,
    Column("thread_id", String, primary_key=True),
    Column("checkpoint_ns", String, primary_key=True),
    Column("checkpoint_id", String, primary_key=True),
    Column("parent_checkpoint_id", String, nullable=True),
    Column("run_id", String, nullable=True),
    Column("step", Integer, nullable=True),
    Column("source", String, nullable=True),
    Column("type", String, nullable=False),
    Column("checkpoint", LargeBinary, nullable=False),
    # JSON text, as LangGraph's own savers keep it, so filters and SQL can read it.
    Column("metadata", Text, nullable=False),
    Column("checksum", String, nullable=False),
    Column("created_at", String, nullable=False),
    Index("ix_lg_checkpoints_run_id", "run_id"),
)

lg_writes = Table(
    "lg_writes",
    metadata,
    Column("thread_id", String, primary_key=True),
    Column("checkpoint_ns", String, primary_key=True),
    Column("checkpoint_id", String, primary_key=True),
    Column("task_id", String, primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("task_path", String, nullable=False),
    Column("channel", String, nullable=False),
    Column("type", String, nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("checksum", String, nullable=False),
    Column("created_at", String, nullable=False),
)

# Claude Agent SDK transcript mirror (clawvm_store.integrations.claude_agent_sdk): one row per
# transcript key (project_key, session_id, subpath; '' is the main transcript) and its entries
# verbatim, in append order. ``projected`` is how many leading entries the page projection has
# consumed (the start of the turn still open); ``turns`` how many turns it has projected.
claude_transcripts = Table(
    "claude_transcripts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_key", String, nullable=False),
    Column("session_id", String, nullable=False),
    Column("subpath", String, nullable=False),
    Column("entries", Integer, nullable=False),
    Column("mtime_ms", Integer, nullable=False),
    Column("summary", Text, nullable=True),
    Column("projected", Integer, nullable=False),
    Column("turns", Integer, nullable=False),
    UniqueConstraint("project_key", "session_id", "subpath"),
)

claude_entries = Table(
    "claude_entries",
    metadata,
    Column(
        "transcript_id",
        Integer,
        ForeignKey("claude_transcripts.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("seq", Integer, primary_key=True),
    Column("uuid", String, nullable=True),
    Column("entry", Text, nullable=False),
    Index("ix_claude_entries_transcript_id_uuid", "transcript_id", "uuid", unique=True),
)

# Full-text index for recall (SQLite FTS5). It is derived data, rebuilt incrementally from page
# versions at recall time, so it is not part of this metadata; revision 0003 creates it.
FTS_TABLE = "pages_fts"


def is_derived_table(name: str | None) -> bool:
    """Tables outside this metadata on purpose: the FTS5 index and SQLite's shadow tables of it."""
    return bool(name) and (name == FTS_TABLE or str(name).startswith(f"{FTS_TABLE}_"))


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic autogenerate filter: compare everything but the derived tables."""
    return not (type_ == "table" and is_derived_table(name))
