"""The migrations ship inside the built wheel, and an installed wheel initializes a database.

The editable install used for development resolves ``clawvm_store`` to the checkout, where the
migrations directory always exists; only a real wheel installed into a separate environment shows
whether ``migrations/`` (env.py, script.py.mako, versions/*.py) is packaged. Nothing is downloaded:
the wheel is built without isolation, installed with ``--no-deps --no-index``, and the fresh
environment borrows its dependencies from the running interpreter's site-packages through a
``.pth`` file (a plain path line, so the editable install's own ``.pth`` hooks are not run).
"""

from __future__ import annotations

import os
import shutil
import site
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from clawvm_store.db import Database

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Everything in a checkout that is not source: build leftovers (a stale build/lib would leak
# deleted files into the wheel), virtual environments, caches and databases.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".ci-venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "*.db",
    "*.db-wal",
    "*.db-shm",
)

EXPECTED_IN_WHEEL = (
    "clawvm_store/migrations/env.py",
    "clawvm_store/migrations/script.py.mako",
    "clawvm_store/migrations/versions/0001_initial.py",
)


def clean_env() -> dict[str, str]:
    """The environment for child interpreters: nothing that adds the checkout to sys.path."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH")
        and not name.startswith("CLAWVM_")
    }
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INDEX"] = "1"
    return env


def run(args: list[str | Path], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a clean copy of the checkout (the checkout itself is not written to)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(PROJECT_ROOT, source, ignore=NOT_SOURCE)
    outdir = base / "dist"
    result = run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", outdir, source],
        cwd=base,
    )
    assert result.returncode == 0, (
        "building the wheel failed (without isolation the build requirements, setuptools>=68 "
        f"and wheel, must be installed in this environment):\n{result.stdout}\n{result.stderr}"
    )
    wheels = sorted(outdir.glob("*.whl"))
    assert len(wheels) == 1, [w.name for w in wheels]
    assert wheels[0].name.startswith("clawvm_store-")
    assert wheels[0].name.endswith("-py3-none-any.whl")
    return wheels[0]


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with only the wheel installed, dependencies borrowed via .pth."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    created = run([sys.executable, "-m", "venv", venv], cwd=venv.parent)
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"

    installed = run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", wheel],
        cwd=venv.parent,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    purelib = run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv
    ).stdout.strip()
    borrowed = [
        path
        for path in site.getsitepackages()
        if Path(path).resolve() != PROJECT_ROOT and Path(path).is_dir()
    ]
    assert borrowed, "the running interpreter has no site-packages to borrow dependencies from"
    # Plain path lines: appended to sys.path after the venv's own site-packages, and .pth files
    # inside them (the editable install's finder) are not executed.
    (Path(purelib) / "_borrowed_dependencies.pth").write_text("\n".join(borrowed) + "\n")
    return venv


def test_wheel_contains_the_migrations(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for expected in EXPECTED_IN_WHEEL:
            assert expected in names, f"{expected} is missing from {wheel.name}"
        # The packaged revision is the checkout's revision, byte for byte.
        packaged = archive.read("clawvm_store/migrations/versions/0001_initial.py")
    checkout = PROJECT_ROOT / "clawvm_store" / "migrations" / "versions" / "0001_initial.py"
    assert packaged == checkout.read_bytes()
    # Every revision in the checkout is in the wheel, not only the first one.
    revisions = {
        f"clawvm_store/migrations/versions/{path.name}"
        for path in (PROJECT_ROOT / "clawvm_store" / "migrations" / "versions").glob("*.py")
    }
    assert revisions <= names


def test_installed_package_is_imported_from_the_fresh_venv(
    fresh_venv: Path, tmp_path: Path
) -> None:
    code = (
        "import sys, clawvm_store, clawvm_store.db as db; "
        "print(clawvm_store.__file__); print(db.MIGRATIONS_DIR); "
        "print('\\n'.join(sys.path))"
    )
    result = run([fresh_venv / "bin" / "python", "-c", code], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    package_file, migrations_dir, *sys_path = result.stdout.splitlines()

    venv_root = fresh_venv.resolve()
    assert Path(package_file).resolve().is_relative_to(venv_root)
    assert not Path(package_file).resolve().is_relative_to(PROJECT_ROOT)
    assert Path(migrations_dir).resolve().is_relative_to(venv_root)
    assert (Path(migrations_dir) / "versions" / "0001_initial.py").is_file()
    assert str(PROJECT_ROOT) not in [str(Path(entry).resolve()) for entry in sys_path if entry]


def test_installed_cli_initializes_a_database_at_head(fresh_venv: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    target = workdir / "agent.db"

    result = run([fresh_venv / "bin" / "clawvm", "--db", target, "init"], cwd=workdir)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert target.is_file()
    db = Database(target, create=False)
    try:
        head = db.head_revision()
        assert db.current_revision() == head
    finally:
        db.dispose()
    con = sqlite3.connect(target)
    try:
        assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
    finally:
        con.close()
    assert f"schema {head}" in result.stdout
