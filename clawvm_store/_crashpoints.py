"""Crash points and acknowledgements, for the crash-test kit (:mod:`clawvm_store.testing`).

Disabled (always, unless the kit or the environment turns it on), every hook in the library is
one global check: ``if _crashpoints.ACTIVE: ...``. Enabled in a child process run by the kit:

* :func:`point` counts *library operations*: each write transaction has three crash points
  (before ``BEGIN``, inside the transaction before ``COMMIT``, and after ``COMMIT`` before the
  caller hears about it). When the count reaches the chosen kill point the process records
  where it is and kills itself with a real ``SIGKILL``. Counting operations instead of waiting
  for a wall-clock instant makes a kill reproducible: the same harness, the same kill point,
  the same crash.
* :func:`ack` appends one JSON line per acknowledged operation to the acknowledgement file,
  just before the library returns to its caller: an operation is acknowledged once its line
  is written. The line goes out with one ``os.write`` on an ``O_APPEND`` descriptor, so it is in
  the kernel's page cache at once and survives ``SIGKILL`` (no fsync: the kit tests process
  crashes, not power loss). A kill between a commit and its line makes the operation *in
  flight*: it may be present or absent, never half.

The environment turns it on too (``CLAWVM_CRASHTEST_ACKS=<file>`` and optionally
``CLAWVM_CRASHTEST_KILL_AT=<n>``), for a harness driven by something other than the kit.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

ACTIVE = False
"""True in a process the crash-test kit runs; every hook checks this first."""

_fd: int | None = None
_kill_at = 0
_count = 0


def enable(ack_path: str, kill_at: int | None = None) -> None:
    """Start counting crash points and writing acknowledgements to ``ack_path``.

    ``kill_at`` is the crash point (1-based) at which the process kills itself; ``None`` never.
    """
    global ACTIVE, _fd, _kill_at, _count
    disable()
    _fd = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    _kill_at = kill_at or 0
    _count = 0
    ACTIVE = True


def disable() -> None:
    """Stop counting and acknowledging (closes the acknowledgement file)."""
    global ACTIVE, _fd
    ACTIVE = False
    if _fd is not None:
        os.close(_fd)
        _fd = None


def count() -> int:
    """How many crash points this process has passed since :func:`enable`."""
    return _count


def _write(record: dict[str, Any]) -> None:
    if _fd is None:
        return
    data = (json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n").encode()
    # One write on an O_APPEND descriptor: a regular file takes it whole (no short writes
    # short of a full disk), so a line is either entirely there or not at all.
    while data:
        data = data[os.write(_fd, data) :]


def label(name: str) -> str:
    """``Qualname/point`` of the library function the caller called (for reports).

    Walks up from the crash point through the library's own frames (and contextlib's, which
    run the transaction primitive) and stops at the first frame of anything else: the harness.
    """
    frame = sys._getframe(1)
    outer = None
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module == "contextlib" or module == __name__:
            frame = frame.f_back  # type: ignore[assignment]
            continue
        if not module.startswith("clawvm_store.") or module.startswith(_NOT_LIBRARY):
            break
        outer = frame
        frame = frame.f_back  # type: ignore[assignment]
    where = outer.f_code.co_qualname if outer is not None else "?"
    return f"{where}/{name}"


_NOT_LIBRARY = ("clawvm_store.testing", "clawvm_store.cli")


def point(name: str) -> None:
    """A crash point: counted, and the process dies here if it is the chosen one."""
    global _count
    _count += 1
    if _count == _kill_at:
        _write({"k": "killed", "at": _count, "label": label(name)})
        os.kill(os.getpid(), signal.SIGKILL)


def digest(value: object) -> str | None:
    """SHA-256 of text, or of a mapping's canonical JSON (``None`` stays ``None``)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        value = dict(value)
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def ack(kind: str, **fields: Any) -> None:
    """Acknowledge one operation (written before the library returns to its caller)."""
    _write({"k": kind, "at": _count, **fields})


_env_acks = os.environ.get("CLAWVM_CRASHTEST_ACKS")
if _env_acks:
    enable(_env_acks, int(os.environ.get("CLAWVM_CRASHTEST_KILL_AT") or 0) or None)
