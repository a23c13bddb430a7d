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

* ``kill_after`` starts a *wall-clock* kill instead: a timer thread that, that many seconds
  after :func:`enable`, notes where the main thread is (in the library, or in the harness's own
  code: its loop, its model, its tools) and sends the process a real ``SIGKILL``. The thread
  needs the GIL to fire, which the main thread gives up at least every switch interval (set to
  0.5 ms here) and during every blocking call (SQLite's steps and fsyncs, file writes), so the
  kill lands within about a millisecond of its instant, at any bytecode or inside a C call.
  Such a kill is reproducible only as far as timing allows: the same delay lands near, not at,
  the same instruction.

The environment turns it on too (``CLAWVM_CRASHTEST_ACKS=<file>`` and optionally
``CLAWVM_CRASHTEST_KILL_AT=<n>`` or ``CLAWVM_CRASHTEST_KILL_AFTER=<seconds>``), for a harness
driven by something other than the kit.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import sysconfig
import threading
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

ACTIVE = False
"""True in a process the crash-test kit runs; every hook checks this first."""

_fd: int | None = None
_kill_at = 0
_count = 0


def enable(ack_path: str, kill_at: int | None = None, kill_after: float | None = None) -> None:
    """Start counting crash points and writing acknowledgements to ``ack_path``.

    ``kill_at`` is the crash point (1-based) at which the process kills itself; ``kill_after``
    a number of seconds from now after which a timer kills it wherever it is; ``None``: never.
    """
    global ACTIVE, _fd, _kill_at, _count
    disable()
    _fd = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    _kill_at = kill_at or 0
    _count = 0
    ACTIVE = True
    if kill_after is not None:
        _start_timer(kill_after)


def _start_timer(delay: float) -> None:
    """Kill this process with ``SIGKILL`` ``delay`` seconds from now, wherever it is."""
    target = threading.get_ident()  # the thread that runs the harness
    started = time.monotonic()

    def fire() -> None:
        deadline = started + delay
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(left)
        # Holding the GIL from here to the kill: the main thread cannot move to another Python
        # line in between, so where it is now is where it dies (a C call it is in may finish).
        frame = sys._current_frames().get(target)
        where, name = locate(frame)
        _write(
            {
                "k": "killed",
                "at": _count,
                "label": name,
                "mode": "time",
                "where": where,
                "after": round(time.monotonic() - started, 6),
            }
        )
        os.kill(os.getpid(), signal.SIGKILL)

    # Without this the timer could wait up to the default 5 ms for the GIL.
    sys.setswitchinterval(0.0005)
    threading.Thread(target=fire, name="clawvm-crashtest-timer", daemon=True).start()


_NOT_LIBRARY = ("clawvm_store.testing", "clawvm_store.cli")
_KIT = "clawvm_store.testing.kit"
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_NOT_LIBRARY_PATHS = (os.path.join(_PACKAGE, "testing") + os.sep, os.path.join(_PACKAGE, "cli.py"))
_SYSTEM_PATHS = tuple(
    sorted(
        {
            os.path.realpath(path) + os.sep
            for key in ("stdlib", "platstdlib", "purelib", "platlib")
            if (path := sysconfig.get_paths().get(key))
        }
    )
)


def _owner(frame: FrameType) -> str | None:
    """``library``, ``harness``, or ``None`` for a frame that belongs to whoever called it.

    Python's standard library and installed third-party packages (SQLAlchemy, sqlite3, Rich,
    LangGraph ...) have no owner of their own: they run on behalf of their caller.
    """
    module = str(frame.f_globals.get("__name__", ""))
    if module == __name__:
        return None
    if module.startswith("clawvm_store."):
        return "harness" if module.startswith(_NOT_LIBRARY) else "library"
    filename = frame.f_code.co_filename
    if filename.startswith(_PACKAGE) and not filename.startswith(_NOT_LIBRARY_PATHS):
        return "library"  # the migration scripts, which Alembic loads under names of its own
    if filename.startswith("<") or os.path.realpath(filename).startswith(_SYSTEM_PATHS):
        return None
    return "harness"


def locate(frame: FrameType | None) -> tuple[str, str]:
    """Where a thread is: ``("library", "Session.end_turn")``, ``("harness", "mod:func")`` or
    ``("kit", ...)`` (outside both).

    The innermost frame that has an owner decides: clawvm-store's own code is the *library*,
    named by the outermost library frame around it (the API the harness called); anything else
    that is not Python's or a third-party package's is the *harness*: its loop, its model, its
    tools (even while the library runs them), named ``module:function``. A harness installed
    as a package in site-packages counts as third-party: a kill in it is attributed to its
    caller.
    """
    current = frame
    while current is not None:
        module = str(current.f_globals.get("__name__", ""))
        if module.startswith(_KIT):
            break  # the kit's child runner: nothing from here out is the harness's
        owner = _owner(current)
        if owner == "harness":
            return "harness", f"{module}:{current.f_code.co_qualname}"
        if owner == "library":
            outer = current
            while current is not None and _owner(current) != "harness":
                if _owner(current) == "library":
                    outer = current
                current = current.f_back
            return "library", outer.f_code.co_qualname
        current = current.f_back
    # Nothing of the harness's or the library's on the stack: the kit's own child runner,
    # just before the harness was called or just after it returned.
    return "kit", "the kit's child runner"


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
    _env_after = os.environ.get("CLAWVM_CRASHTEST_KILL_AFTER")
    enable(
        _env_acks,
        int(os.environ.get("CLAWVM_CRASHTEST_KILL_AT") or 0) or None,
        float(_env_after) if _env_after else None,
    )
