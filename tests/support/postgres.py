"""A throwaway local PostgreSQL server (hack/postgres.sh), for the tests and the benchmarks."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "hack" / "postgres.sh"


@contextmanager
def local_postgres() -> Iterator[str]:
    """A fresh server, stopped and removed on exit; its DSN."""
    # Directly under /tmp: as root the server runs as `postgres`, which cannot
    # enter pytest's private (0700) temporary directories.
    workdir = tempfile.mkdtemp(prefix="agent-operator-pg-")
    try:
        started = subprocess.run(
            [str(SCRIPT), "start", workdir], capture_output=True, text=True, timeout=600
        )
        if started.returncode != 0:
            raise RuntimeError(f"hack/postgres.sh could not start PostgreSQL:\n{started.stderr}")
        yield started.stdout.strip()
    finally:
        subprocess.run([str(SCRIPT), "stop", workdir], capture_output=True, timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)
