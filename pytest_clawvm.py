"""clawvm-store's pytest plugin: the ``crash_harness`` fixture (see :mod:`clawvm_store.testing`).

Registered through the ``pytest11`` entry point, so installing clawvm-store makes the fixture
available in every project::

    def test_my_agent_survives(crash_harness):
        crash_harness.run(my_agent_main, kills=50)

It lives outside the ``clawvm_store`` package on purpose: pytest imports every installed plugin
at startup, and importing ``clawvm_store`` costs about 0.3 s (SQLAlchemy, Alembic, tiktoken).
This module imports it only when a test asks for the fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from clawvm_store.testing import CrashHarness


@pytest.fixture
def crash_harness(tmp_path: Path) -> CrashHarness:
    """Crash-test a harness: ``crash_harness.run(main, kills=50)``, ``.replay(main, ...)``.

    A broken invariant fails the test with :class:`~clawvm_store.testing.CrashInvariantError`,
    whose message names the seed, the kill point, the invariant and the replay line. The
    databases of failing cases are kept under the test's ``tmp_path``.
    """
    from clawvm_store.testing import CrashHarness

    return CrashHarness(tmp_path / "crashtest")
