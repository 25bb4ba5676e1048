"""A throwaway local PostgreSQL server (hack/postgres.sh), for the tests and the benchmarks."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "hack" / "postgres.sh"


class PostgresServer:
    """One server in its own directory; `stop()` and `start()` again keep its data, its
    password and (while it is free) its port, so its DSN stays valid: an outage."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.dsn = ""

    def start(self) -> str:
        started = self._run("start", timeout=600)
        if started.returncode != 0:
            raise RuntimeError(f"hack/postgres.sh could not start PostgreSQL:\n{started.stderr}")
        dsn = started.stdout.strip()
        if self.dsn and dsn != self.dsn:
            raise RuntimeError(f"PostgreSQL came back at another address: {dsn}")
        self.dsn = dsn
        return dsn

    def stop(self) -> None:
        stopped = self._run("stop", timeout=120)
        if stopped.returncode != 0:
            raise RuntimeError(f"hack/postgres.sh could not stop PostgreSQL:\n{stopped.stderr}")

    def _run(self, action: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), action, str(self.workdir)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A fresh, started server, stopped and removed on exit."""
    # Directly under /tmp: as root the server runs as `postgres`, which cannot
    # enter pytest's private (0700) temporary directories.
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="agent-operator-pg-")))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@contextmanager
def local_postgres() -> Iterator[str]:
    """A fresh server, stopped and removed on exit; its DSN."""
    with postgres_server() as server:
        yield server.dsn
