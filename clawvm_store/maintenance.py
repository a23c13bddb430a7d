"""Maintenance: garbage collection of old page versions, and ``check --fix``.

``gc`` — keep each page's newest ``keep_versions`` versions and remove the older ones, unless
something still refers to them. The rule, exactly:

A page version is **kept** when any of these holds (every other version is removed, entirely:
its ``page_versions`` row and all its ``representations``):

1. it is one of the page's ``keep_versions`` newest stored versions, or it is the page's head
   (``pages.version``; the newest stored version is kept too, should the two ever disagree);
2. an **assembly record** names it: an ``assembly_items`` row with its ``(page_id, version)``,
   evicted items included;
3. a **tool call** names it as its result: ``tool_calls (result_key, result_version)``, resolved
   in the call's project among the call's session's pages and the project's pages;
4. a **journal entry** refers to it: a payload whose ``provenance`` is ``{"page": "key@N"}``, a
   pointer handle ``[ptr key@N ...]`` in any string of a payload (an applied entry keeps its
   content only as a hash: the text is its version's, rule 5), or (for an entry still
   ``staged`` or ``committed``) the entry's ``expected_version`` or ``version`` on its own key.
   Entries in every state count, quarantined and rejected ones included;
5. a **pointer** names it: a handle ``[ptr key@N ...]`` anywhere in the text of a kept version's
   representations or structured fields, in a journal payload (4), or in a tool call's arguments
   or error text. A version's own pointer fidelity naming itself does not count;
6. a kept version (or a page head) names it in its **provenance** ``{"page": "key@N"}``.

References by key (3-6) resolve within the referring row's project, to a page of that key in
any session of it, so an ambiguous name keeps every candidate. 5 and 6 are followed
transitively: a version referred to by a kept version is kept, however long the chain, while a
reference held only by a removed version dies with it. Every text and provenance enters through
a journal payload, so in practice a version named anywhere stays as long as the journal entry
naming it does (rule 4, and gc never removes journal entries); the version-to-version rules
matter for data whose journal rows are gone (an imported store).

What does *not* count as a reference: the journal entry that *produced* a version (its
``journal.version``) once it is ``applied`` or ``rejected``, and the ``expected_version`` of an
applied entry. They record where a version came from, not a need for its text; counting them
would keep every version forever. Those journal rows are never touched by gc, so the write
history stays auditable; only the materialized version and its fidelities go.

``gc`` is a dry run by default (it reads in a read transaction and reports what would go); a
real run plans and deletes in one write transaction, all or nothing. Removing rows frees pages
inside the file; ``Store.vacuum()`` returns them to the filesystem.

``check_fix`` — run :meth:`Store.check` and repair what can be repaired without guessing and
without deleting anything; see :func:`check_fix` for the exact list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Connection, delete, func, inspect, or_, select, update

from . import schema as t
from .errors import InvalidInput, SchemaInvalid
from .journal import COMMITTED, JOURNAL_WITH_CONTENT, STAGED, version_row_sha256
from .pages import POLICIES, Fidelity, Op, PageType, Pin, Scope, check_retention
from .representations import (
    build_content_representations,
    canonical_json,
    text_sha256,
    with_pointer,
)
from .segments import detach

if TYPE_CHECKING:
    from .store import CheckReport, Finding, RecoveryReport, Store

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)``: once with ``done=0`` when the total is known, then
after each page. A ``rich`` bar can follow it with ``bar.update(task, completed=done,
total=total)``."""

# A pointer handle anywhere in a text; the same grammar as ``representations.parse_pointer``.
_POINTER = re.compile(r"\[ptr (?P<key>\S+)@(?P<version>\d+)[\s\]]")
_PENDING = ("staged", "committed")

_Version = tuple[int, int]  # (page_id, version)


# -- gc ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionRef:
    """One page version, named the way a person looks it up."""

    project: str
    session: str | None
    key: str
    version: int

    def __str__(self) -> str:
        where = f" (session {self.session})" if self.session else ""
        return f"{self.project}:{self.key}@{self.version}{where}"


@dataclass(frozen=True)
class KeptVersion:
    """A version older than the ``keep_versions`` newest, kept because something refers to it."""

    version: VersionRef
    reasons: tuple[str, ...]


@dataclass
class GcReport:
    """What :func:`gc` removed (or, in a dry run, would remove) and what it kept and why."""

    RULE: ClassVar[str] = (
        "keep the newest N versions and the head of every page, and any older version that an "
        "assembly item, a tool call's result, a journal entry (provenance page@N, a pointer in "
        "its payload, or a pending entry's expected_version/version), a pointer handle in a "
        "kept text, or a kept version's provenance page@N refers to; remove the rest entirely"
    )

    keep_versions: int | None
    dry_run: bool
    project: str | None = None
    # Per page type, the versions kept instead of ``keep_versions`` (the retention policy).
    retention: dict[str, int] = field(default_factory=dict)
    pages: int = 0
    versions: int = 0
    removed: list[VersionRef] = field(default_factory=list)
    kept_referenced: list[KeptVersion] = field(default_factory=list)
    representations_removed: int = 0

    @property
    def versions_removed(self) -> int:
        """How many versions were removed (would be, in a dry run)."""
        return len(self.removed)

    @property
    def changed(self) -> bool:
        """Whether the database was changed."""
        return not self.dry_run and bool(self.removed)


@dataclass
class _PageInfo:
    id: int
    project: str
    session_id: str
    key: str
    head: int
    type: str = ""
    versions: list[int] = field(default_factory=list)

    def ref(self, version: int) -> VersionRef:
        return VersionRef(self.project, self.session_id or None, self.key, version)


class _References:
    """Collects who refers to which candidate version: outside sources, and version → version."""

    def __init__(
        self,
        pages: Mapping[int, _PageInfo],
        candidates: set[_Version],
    ) -> None:
        self.pages = pages
        self.candidates = candidates
        self.by_key: dict[tuple[str, str], list[int]] = {}
        for info in pages.values():
            self.by_key.setdefault((info.project, info.key), []).append(info.id)
        self.external: dict[_Version, list[str]] = {}
        self.edges: dict[_Version, list[tuple[_Version, str]]] = {}

    def targets(
        self, project: str, key: str, version: int, sessions: Iterable[str] | None = None
    ) -> Iterator[_Version]:
        wanted = set(sessions) if sessions is not None else None
        for page_id in self.by_key.get((project, key), ()):
            if wanted is not None and self.pages[page_id].session_id not in wanted:
                continue
            if (page_id, version) in self.candidates:
                yield page_id, version

    def add(self, source: _Version | None, targets: Iterable[_Version], reason: str) -> None:
        for target in targets:
            if source is None:
                self.external.setdefault(target, []).append(reason)
            elif target != source:
                self.edges.setdefault(source, []).append((target, reason))

    def kept(self) -> dict[_Version, list[str]]:
        """Candidates reachable from an outside reference or from a kept version, with reasons."""
        kept: dict[_Version, list[str]] = {}
        queue: list[_Version] = []

        def mark(target: _Version, reason: str) -> None:
            if target not in kept:
                kept[target] = []
                queue.append(target)
            if reason not in kept[target]:
                kept[target].append(reason)

        for target, reasons in self.external.items():
            for reason in reasons:
                mark(target, reason)
        for source, outgoing in self.edges.items():
            if source not in self.candidates:
                for target, reason in outgoing:
                    mark(target, reason)
        while queue:
            source = queue.pop()
            for target, reason in self.edges.get(source, ()):
                mark(target, reason)
        return kept


def _page_ref(value: object) -> tuple[str, int] | None:
    """(key, version) of a provenance ``"key@N"``, as journal validation reads it."""
    if not isinstance(value, str):
        return None
    key, _, version_text = value.partition("@")
    if not key or not (version_text.isascii() and version_text.isdigit()):
        return None
    try:
        return key, int(version_text)
    except ValueError:
        return None


def _provenance_ref(provenance: object) -> tuple[str, int] | None:
    if isinstance(provenance, str):
        try:
            provenance = json.loads(provenance)
        except ValueError:
            return None
    if isinstance(provenance, dict):
        return _page_ref(provenance.get("page"))
    return None


def _pointers(value: object) -> Iterator[tuple[str, int]]:
    """Every pointer handle in a text, or in the strings of a decoded JSON value."""
    if isinstance(value, str):
        if "[ptr " in value:
            for match in _POINTER.finditer(value):
                yield match.group("key"), int(match.group("version"))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _pointers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _pointers(item)


def _json_or_text(value: object) -> object:
    if not isinstance(value, str):
        return None
    try:
        decoded: object = json.loads(value)
    except ValueError:
        return value  # undecodable: scan the raw text
    return decoded


def _as_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _load_pages(conn: Connection) -> dict[int, _PageInfo]:
    pages = {
        row.id: _PageInfo(
            row.id, row.project, row.session_id, row.key, int(row.version), str(row.type)
        )
        for row in conn.execute(
            select(
                t.pages.c.id,
                t.pages.c.project,
                t.pages.c.session_id,
                t.pages.c.key,
                t.pages.c.version,
                t.pages.c.type,
            )
        )
    }
    for page_id, version in conn.execute(
        select(t.page_versions.c.page_id, t.page_versions.c.version).order_by(
            t.page_versions.c.page_id, t.page_versions.c.version
        )
    ):
        info = pages.get(page_id)
        if info is not None:
            info.versions.append(int(version))
    return pages


def _collect_references(conn: Connection, refs: _References) -> None:
    for collect in (
        _refs_from_assemblies,
        _refs_from_tool_calls,
        _refs_from_journal,
        _refs_from_heads,
        _refs_from_versions,
        _refs_from_texts,
    ):
        collect(conn, refs)


def _refs_from_assemblies(conn: Connection, refs: _References) -> None:
    """2. Assembly records name (page id, version) directly."""
    query = select(
        t.assembly_items.c.assembly_id, t.assembly_items.c.page_id, t.assembly_items.c.version
    )
    for item in conn.execute(query):
        target = (int(item.page_id), int(item.version))
        if target in refs.candidates:
            refs.add(None, [target], f"assembly {item.assembly_id}")


def _refs_from_tool_calls(conn: Connection, refs: _References) -> None:
    """3. A call's result version; 5. pointers in its arguments and error text."""
    query = select(
        t.tool_calls.c.call_id,
        t.tool_calls.c.project,
        t.tool_calls.c.session_id,
        t.tool_calls.c.result_key,
        t.tool_calls.c.result_version,
        t.tool_calls.c.args,
        t.tool_calls.c.error,
    )
    for call in conn.execute(query):
        reason = f"tool call {call.session_id}/{call.call_id}"
        version = _as_int(call.result_version)
        if isinstance(call.result_key, str) and version is not None:
            refs.add(
                None,
                refs.targets(call.project, call.result_key, version, (call.session_id, "")),
                f"result of {reason}",
            )
        for value in (_json_or_text(call.args), call.error):
            for key, number in _pointers(value):
                refs.add(None, refs.targets(call.project, key, number), f"pointer in {reason}")


def _refs_from_journal(conn: Connection, refs: _References) -> None:
    """4. Provenance and pointers in payloads; a pending entry's expected_version and version."""
    query = (
        select(
            t.journal.c.lsn,
            t.journal.c.project,
            t.journal.c.key,
            t.journal.c.state,
            t.journal.c.payload,
            t.journal.c.version,
            t.journal_content.c.content,
        )
        .select_from(JOURNAL_WITH_CONTENT)
        .where(
            or_(
                STAGED,
                COMMITTED,
                t.journal.c.payload.contains('"page"'),
                t.journal.c.payload.contains("[ptr "),
                t.journal_content.c.content.contains("[ptr "),
            )
        )
    )
    for entry in conn.execute(query):
        reason = f"journal lsn {entry.lsn}"
        payload = _json_or_text(entry.payload)
        if isinstance(payload, dict) and entry.content is not None:
            payload["content"] = entry.content  # not applied yet: its text is kept aside
        if isinstance(payload, dict):
            found = _provenance_ref(payload.get("provenance"))
            if found is not None:
                refs.add(None, refs.targets(entry.project, *found), f"provenance of {reason}")
        for key, number in _pointers(payload):
            refs.add(None, refs.targets(entry.project, key, number), f"pointer in {reason}")
        if entry.state in _PENDING:
            numbers = [_as_int(entry.version)]
            if isinstance(payload, dict):
                numbers.append(_as_int(payload.get("expected_version")))
            for pending in numbers:
                if pending is not None:
                    refs.add(
                        None, refs.targets(entry.project, entry.key, pending), f"pending {reason}"
                    )


def _refs_from_heads(conn: Connection, refs: _References) -> None:
    """6. A page head's provenance (its version row says the same; heads are always kept)."""
    query = select(t.pages.c.project, t.pages.c.key, t.pages.c.provenance).where(
        t.pages.c.provenance.contains('"page"')
    )
    for head in conn.execute(query):
        found = _provenance_ref(head.provenance)
        if found is not None:
            refs.add(
                None, refs.targets(head.project, *found), f"provenance of {head.key} (the head)"
            )


def _refs_from_versions(conn: Connection, refs: _References) -> None:
    """6. A version's provenance; 5. pointers in its structured fields (followed if it is kept)."""
    query = select(
        t.page_versions.c.page_id,
        t.page_versions.c.version,
        t.page_versions.c.provenance,
        t.page_versions.c.fields,
    ).where(
        or_(
            t.page_versions.c.provenance.contains('"page"'),
            t.page_versions.c.fields.contains("[ptr "),
        )
    )
    for row in conn.execute(query):
        info = refs.pages.get(row.page_id)
        if info is None:
            continue
        source = (int(row.page_id), int(row.version))
        name = f"{info.key}@{row.version}"
        found = _provenance_ref(row.provenance)
        if found is not None:
            refs.add(source, refs.targets(info.project, *found), f"provenance of {name}")
        for key, number in _pointers(_json_or_text(row.fields)):
            refs.add(source, refs.targets(info.project, key, number), f"pointer in {name}")


def _refs_from_texts(conn: Connection, refs: _References) -> None:
    """5. Pointer handles in the text of a version's representations (followed if it is kept)."""
    query = select(
        t.representations.c.page_id,
        t.representations.c.version,
        t.representations.c.fidelity,
        t.representations.c.content,
    ).where(t.representations.c.content.contains("[ptr "))
    for rep in conn.execute(query):
        info = refs.pages.get(rep.page_id)
        if info is None:
            continue
        source = (int(rep.page_id), int(rep.version))
        name = f"{info.key}@{rep.version} {rep.fidelity}"
        for key, number in _pointers(rep.content):
            refs.add(source, refs.targets(info.project, key, number), f"pointer in {name}")


def gc(
    store: Store,
    *,
    keep_versions: int | None = None,
    retention: Mapping[PageType | str, int] | None = None,
    dry_run: bool = True,
    project: str | None = None,
    progress: ProgressCallback | None = None,
) -> GcReport:
    """Remove page versions beyond each page's ``keep_versions`` newest that nothing refers to.

    The rule is in the module docstring (and :attr:`GcReport.RULE`). ``retention`` (page type →
    versions to keep; by default the store's own, from ``Store.open(retention=...)``) overrides
    ``keep_versions`` for the types it names; pages of other types keep ``keep_versions``, or
    everything when that is ``None``. ``dry_run=True`` (the default) changes nothing and reports
    what would go; otherwise planning and removal run in one write transaction. ``project``
    limits the pages collected (references are looked for everywhere). ``progress(done, total)``
    is called per page. Raises :class:`InvalidInput` for a count below 1, or when neither a
    count nor a retention policy is given.
    """
    if keep_versions is not None and (
        isinstance(keep_versions, bool) or not isinstance(keep_versions, int) or keep_versions < 1
    ):
        raise InvalidInput(
            f"keep_versions must be an integer of at least 1 (the head is always kept), "
            f"not {keep_versions!r}"
        )
    policy = check_retention(retention) if retention is not None else dict(store.retention)
    if keep_versions is None and not policy:
        raise InvalidInput("give keep_versions or a retention policy (page type: versions)")
    if project is not None and (not isinstance(project, str) or not project.strip()):
        raise InvalidInput("project must be a non-empty string")
    report = GcReport(
        keep_versions=keep_versions,
        dry_run=dry_run,
        project=project,
        retention={page_type.value: keep for page_type, keep in policy.items()},
    )
    with store.db.transaction(write=not dry_run) as conn:
        pages = _load_pages(conn)
        scope = sorted(
            (info for info in pages.values() if project is None or info.project == project),
            key=lambda info: (info.project, info.session_id, info.key),
        )
        candidates: set[_Version] = set()
        for info in scope:
            report.versions += len(info.versions)
            keep = report.retention.get(info.type, keep_versions)
            if keep is None:
                continue  # a type the policy leaves alone
            newest = sorted(info.versions, reverse=True)
            protected = set(newest[:keep]) | {info.head}
            candidates.update((info.id, v) for v in newest[keep:] if v not in protected)
        report.pages = len(scope)
        kept: dict[_Version, list[str]] = {}
        if candidates:
            refs = _References(pages, candidates)
            _collect_references(conn, refs)
            kept = refs.kept()
        total = len(scope)
        if progress is not None:
            progress(0, total)
        for done, info in enumerate(scope, start=1):
            doomed = sorted(
                v for v in info.versions if (info.id, v) in candidates and (info.id, v) not in kept
            )
            for version in sorted(v for v in info.versions if (info.id, v) in kept):
                report.kept_referenced.append(
                    KeptVersion(info.ref(version), tuple(kept[(info.id, version)]))
                )
            report.removed.extend(info.ref(v) for v in doomed)
            if doomed and not dry_run:
                # A staying appended version must not need a removed one's segment.
                detach(conn, info.id, doomed)
                result = conn.execute(
                    delete(t.representations).where(
                        t.representations.c.page_id == info.id,
                        t.representations.c.version.in_(doomed),
                    )
                )
                report.representations_removed += int(result.rowcount or 0)
                conn.execute(
                    delete(t.page_versions).where(
                        t.page_versions.c.page_id == info.id,
                        t.page_versions.c.version.in_(doomed),
                    )
                )
            elif doomed:
                report.representations_removed += int(
                    conn.execute(
                        select(func.count())
                        .select_from(t.representations)
                        .where(
                            t.representations.c.page_id == info.id,
                            t.representations.c.version.in_(doomed),
                        )
                    ).scalar()
                    or 0
                )
            if progress is not None:
                progress(done, total)
    return report


# -- check --fix ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Repair:
    """One repair :func:`check_fix` made: the check finding code, what it was on, what it did."""

    code: str
    target: str
    action: str


@dataclass(frozen=True)
class Refusal:
    """A problem :func:`check_fix` looked at and left alone, and why."""

    code: str
    target: str
    reason: str


UNREPAIRABLE: dict[str, str] = {
    "integrity": "SQLite reports damage to the file itself; restore it from a backup",
    "foreign_key": "a row refers to one that does not exist; removing either would lose data",
    "undecodable": "a stored value does not decode; only a backup has the original",
    "content_hash": (
        "the text does not match the hash written with it: it changed after it was written, "
        "and rehashing would only hide the damage; restore it from a backup"
    ),
    "row_hash": (
        "the version row does not match the hash written with it: it changed after it was "
        "written, and rehashing would only hide the damage; restore it from a backup"
    ),
    "fidelity_missing": (
        "the lower fidelities are rebuilt only from a full text that verifies against the "
        "version's content hash, with the version's recorded fields"
    ),
    "fidelity_extra": "a representation off the type's ladder; removing it would delete data",
    "token_order": "the texts themselves cost more down the ladder; only rewriting them would fix it",
    "token_count": "the text does not verify against its hash, so its count is not rewritten",
    "pointer": "the pointer text names another page or version; rewriting it would lose data",
    "head": (
        "the page's head does not match a stored version that verifies (and, to move the head, "
        "an applied journal entry that produced it)"
    ),
    "journal_checksum": (
        "a journal entry fails its checksum; recovery quarantines pending ones, applied ones "
        "are history and are left as they are"
    ),
    "journal_unapplied": "recovery could not apply the entry",
}
"""Why each kind of finding can be left after :func:`check_fix`."""


@dataclass
class FixReport:
    """What :func:`check_fix` found, repaired, refused, and what :meth:`Store.check` says now."""

    before: CheckReport
    after: CheckReport
    repairs: list[Repair] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    recovery: RecoveryReport | None = None

    @property
    def ok(self) -> bool:
        """Whether the database checks clean after the repairs."""
        return self.after.ok

    @property
    def changed(self) -> bool:
        """Whether anything was repaired."""
        return bool(self.repairs) or bool(self.recovery is not None and self.recovery.changed)

    @property
    def unrepaired(self) -> list[tuple[Finding, str]]:
        """Each finding left after the repairs, with why it was not repaired."""
        return [
            (finding, UNREPAIRABLE.get(finding.code, "no safe repair is known"))
            for finding in self.after.findings
        ]


_REPAIRABLE = frozenset({"token_count", "fidelity_missing", "head"})
_CACHED = ("type", "pin", "priority", "scope", "provenance", "deleted")


def _row_hash_state(row: Any) -> bool | None:
    """True when the version row verifies, False when it does not, None when it has no hash."""
    if row.row_sha256 is None:
        return None
    try:
        return bool(version_row_sha256(row._mapping) == row.row_sha256)
    except (TypeError, ValueError, UnicodeError):
        return False


def _decodes(row: Any) -> bool:
    try:
        PageType(row.type)
        Op(row.op)
        Pin(row.pin)
        Scope(row.scope)
        for value in (row.fields, row.provenance):
            if value is not None:
                json.loads(value)
    except (ValueError, TypeError):
        return False
    return True


def _text_verifies(rep: Any, content_hash: str | None) -> bool:
    """A representation's text is a string that matches every hash recorded for it."""
    if not isinstance(rep.content, str):
        return False
    try:
        digest = text_sha256(rep.content)
    except (UnicodeError, ValueError):
        return False
    if rep.sha256 is not None and digest != rep.sha256:
        return False
    return content_hash is None or digest == content_hash


class _Fixer:
    def __init__(self, store: Store, conn: Connection) -> None:
        self.store = store
        self.conn = conn
        self.repairs: list[Repair] = []
        self.refused: list[Refusal] = []
        self.fts_pages: list[int] = []

    def run(self) -> None:
        conn = self.conn
        pages = conn.execute(select(t.pages).order_by(t.pages.c.id)).all()
        keys = {row.id: str(row.key) for row in pages}
        versions = conn.execute(
            select(t.page_versions).order_by(t.page_versions.c.page_id, t.page_versions.c.version)
        ).all()
        reps: dict[_Version, dict[str, Any]] = {}
        for rep in conn.execute(select(t.representations)):
            reps.setdefault((rep.page_id, rep.version), {})[rep.fidelity] = rep
        for row in versions:
            if row.page_id not in keys or row.deleted or _row_hash_state(row) is False:
                continue
            if not _decodes(row):
                continue
            name = f"{keys[row.page_id]}@{row.version}"
            self._fix_version(
                name, keys[row.page_id], row, reps.get((row.page_id, row.version), {})
            )
        by_version = {(row.page_id, row.version): row for row in versions}
        newest: dict[int, int] = {}
        for row in versions:
            newest[row.page_id] = max(newest.get(row.page_id, 0), int(row.version))
        for page in pages:
            self._fix_head(page, newest.get(page.id), by_version)
        for page_id in self.fts_pages:
            _refresh_fts(conn, page_id)

    # token counts and missing fidelities of one live version
    def _fix_version(self, name: str, key: str, row: Any, reps: dict[str, Any]) -> None:
        counter = self.store.counter
        tokens: dict[str, int] = {}
        for fidelity, rep in sorted(reps.items()):
            if not isinstance(rep.tokens, int):
                continue
            tokens[fidelity] = rep.tokens
            own_hash = row.content_hash if fidelity == Fidelity.FULL.value else None
            if not _text_verifies(rep, own_hash):
                continue
            try:
                actual = counter.count(rep.content)
            except (UnicodeError, ValueError, TypeError):
                continue
            if actual == rep.tokens:
                continue
            self.conn.execute(
                update(t.representations)
                .where(
                    t.representations.c.page_id == row.page_id,
                    t.representations.c.version == row.version,
                    t.representations.c.fidelity == fidelity,
                )
                .values(tokens=actual)
            )
            tokens[fidelity] = actual
            self.repairs.append(
                Repair(
                    "token_count",
                    f"{name} {fidelity}",
                    f"stored {rep.tokens} tokens; recounted {actual} and stored that",
                )
            )
        page_type = PageType(row.type)
        ladder = POLICIES[page_type].ladder
        missing = [f for f in ladder if f.value not in reps]
        if not missing:
            return
        target = f"{name} {', '.join(f.value for f in missing)}"
        full = reps.get(Fidelity.FULL.value)
        if full is None:
            self.refused.append(
                Refusal(
                    "fidelity_missing", target, "the full text is missing: nothing to rebuild from"
                )
            )
            return
        if row.content_hash is None or not _text_verifies(full, row.content_hash):
            self.refused.append(
                Refusal(
                    "fidelity_missing",
                    target,
                    "the full text does not verify against the version's content hash",
                )
            )
            return
        if row.fields is None:
            self.refused.append(
                Refusal("fidelity_missing", target, "the version records no structured fields")
            )
            return
        try:
            fields = json.loads(row.fields)
            provenance = json.loads(row.provenance) if row.provenance else None
            content = build_content_representations(
                page_type,
                full.content,
                key=key,
                scope=Scope(row.scope),
                provenance=provenance,
                structured=fields,
                timestamp=str(row.committed_at),
                counter=counter,
                compressor=self.store.compressor,
            )
        except (SchemaInvalid, ValueError, TypeError) as exc:
            self.refused.append(
                Refusal("fidelity_missing", target, f"the recorded fields do not validate: {exc}")
            )
            return
        if canonical_json(content.fields) != row.fields:
            self.refused.append(
                Refusal(
                    "fidelity_missing", target, "the recorded fields do not round-trip validation"
                )
            )
            return
        levels = {
            level.fidelity: level
            for level in with_pointer(content, key=key, version=int(row.version), counter=counter)
        }
        ladder_tokens = [
            levels[f].tokens if f in missing else tokens.get(f.value, -1) for f in ladder
        ]
        if -1 in ladder_tokens or ladder_tokens != sorted(ladder_tokens, reverse=True):
            self.refused.append(
                Refusal(
                    "fidelity_missing",
                    target,
                    f"the rebuilt texts would break the ladder's token order: {ladder_tokens}",
                )
            )
            return
        self.conn.execute(
            t.representations.insert(),
            [
                {
                    "page_id": row.page_id,
                    "version": row.version,
                    "fidelity": fidelity.value,
                    "content": levels[fidelity].text,
                    "tokens": levels[fidelity].tokens,
                    "source": levels[fidelity].source.value,
                    "sha256": text_sha256(levels[fidelity].text),
                }
                for fidelity in missing
            ],
        )
        self.repairs.append(
            Repair("fidelity_missing", target, "rebuilt from the verified full text and fields")
        )

    # the pages row: its head version and the metadata it caches from it
    def _fix_head(self, page: Any, newest: int | None, by_version: Mapping[_Version, Any]) -> None:
        target = f"page {page.key!r}"
        if newest is None:
            self.refused.append(Refusal("head", target, "the page has no stored version"))
            return
        if page.version != newest:
            if not isinstance(page.version, int) or page.version > newest:
                self.refused.append(
                    Refusal(
                        "head",
                        target,
                        f"the head names version {page.version!r}, which is not stored "
                        f"(newest stored is {newest})",
                    )
                )
                return
            row = by_version[(page.id, newest)]
            if _row_hash_state(row) is not True or not _decodes(row):
                self.refused.append(
                    Refusal("head", target, f"version {newest} does not verify against its hash")
                )
                return
            producer = self.conn.execute(
                select(t.journal.c.state, t.journal.c.version, t.journal.c.key).where(
                    t.journal.c.lsn == row.lsn, t.journal.c.project == page.project
                )
            ).first()
            if (
                producer is None
                or producer.state != "applied"
                or producer.version != newest
                or producer.key != page.key
            ):
                self.refused.append(
                    Refusal(
                        "head",
                        target,
                        f"no applied journal entry produced version {newest} (lsn {row.lsn})",
                    )
                )
                return
            self._rewrite_head(page, row, f"head moved from version {page.version} to {newest}")
            return
        row = by_version.get((page.id, page.version))
        if row is None or all(getattr(page, name) == getattr(row, name) for name in _CACHED):
            return
        if _row_hash_state(row) is False or not _decodes(row):
            self.refused.append(
                Refusal(
                    "head", target, f"its head version {page.version} is damaged; not copied from"
                )
            )
            return
        changed = [name for name in _CACHED if getattr(page, name) != getattr(row, name)]
        self._rewrite_head(
            page, row, f"{', '.join(changed)} rewritten from version {page.version}'s row"
        )

    def _rewrite_head(self, page: Any, row: Any, action: str) -> None:
        values = {name: getattr(row, name) for name in _CACHED}
        values["version"] = row.version
        values["updated_at"] = row.committed_at
        if row.version != page.version:
            # The fold belonged to the old head; the next append derives the new one's.
            values["fold"] = None
        self.conn.execute(update(t.pages).where(t.pages.c.id == page.id).values(**values))
        self.repairs.append(Repair("head", f"page {page.key!r}", action))
        self.fts_pages.append(int(page.id))


def _refresh_fts(conn: Connection, page_id: int) -> None:
    """Re-index one page's head in the recall index (derived data), as recall's catch-up does."""
    if not inspect(conn).has_table(t.FTS_TABLE):
        return
    from .recall import index_page

    row = conn.execute(
        select(
            t.pages.c.key,
            t.pages.c.project,
            t.pages.c.session_id,
            t.pages.c.deleted,
            t.pages.c.provenance,
            t.representations.c.content,
        )
        .select_from(
            t.pages.join(
                t.representations,
                (t.representations.c.page_id == t.pages.c.id)
                & (t.representations.c.version == t.pages.c.version)
                & (t.representations.c.fidelity == Fidelity.FULL.value),
            )
        )
        .where(t.pages.c.id == page_id)
    ).first()
    index_page(conn, page_id, None if row is None or row.deleted else row)


def check_fix(store: Store) -> FixReport:
    """Run :meth:`Store.check`, repair what is safe to repair, and check again.

    Repaired (each only from data that verifies; nothing is ever deleted):

    * ``token_count``: a stored token count that differs from a recount of a text that matches
      its hashes is rewritten (with the store's encoding);
    * ``fidelity_missing``: the missing fidelities of a live version are rebuilt from its full
      text, when that text verifies against the version's ``content_hash``, with the version's
      recorded fields, and only if the result keeps the ladder's token order;
    * ``head``: a ``pages`` row whose cached columns (type, pin, priority, scope, provenance,
      deleted) disagree with its head version's row is rewritten from that row (unless the row
      fails its hash); a head that lags the newest stored version is moved to it when that
      version's row verifies against its hash and an ``applied`` journal entry produced it;
    * ``journal_unapplied``: entries left ``committed`` are re-applied by
      :meth:`Store.recover` (``verify="pending"``, as open does).

    Refused, and reported: hash mismatches of any kind (``content_hash``, ``row_hash``: damage
    that rehashing would hide), SQLite integrity and foreign-key failures, undecodable values,
    fidelities off the ladder, token order, bad pointers, and journal checksum failures of
    applied entries. Missing hashes (rows from before revision 0002) are left as they are.
    """
    before = store.check()
    report = FixReport(before=before, after=before)
    codes = {finding.code for finding in before.findings}
    if codes & _REPAIRABLE:
        with store.db.transaction() as conn:
            fixer = _Fixer(store, conn)
            fixer.run()
        report.repairs.extend(fixer.repairs)
        report.refused.extend(fixer.refused)
    if "journal_unapplied" in codes:
        with store.db.transaction(write=False) as conn:
            committed = [
                int(lsn)
                for lsn in conn.execute(
                    select(t.journal.c.lsn).where(COMMITTED).order_by(t.journal.c.lsn)
                ).scalars()
            ]
        recovery = store.recover(verify="pending")
        report.recovery = recovery
        quarantined = dict(recovery.quarantined)
        for lsn in committed:
            if lsn in recovery.reapplied:
                action = "re-applied by recovery"
            elif lsn in quarantined:
                action = f"quarantined by recovery: {quarantined[lsn]}"
            else:
                action = "marked applied by recovery (its version was already in place)"
            report.repairs.append(Repair("journal_unapplied", f"journal lsn {lsn}", action))
    if report.repairs or report.recovery is not None:
        report.after = store.check()
    return report
