"""Start or stop the e2e cluster in the background: the local control plane and kubelet.

    python hack/cluster.py up [--dir DIR] [--bin-dir DIR]
        start them; the admin kubeconfig's path is the last line on stdout, so
        `export KUBECONFIG_E2E=$(python hack/cluster.py up)` points the e2e tests at it
    python hack/cluster.py down [--dir DIR]
        stop everything `up` started in DIR (the kubelet first, which kills its pods)

DIR defaults to ~/.cache/agent-operator/cluster; logs are in DIR/logs. See docs/e2e.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from localcluster.controlplane import (  # noqa: E402
    ClusterError,
    ControlPlane,
    NodeCredentials,
    eventually,
    record_process,
    recorded_alive,
    stop_recorded,
)
from localcluster.kubelet import project_kubelet  # noqa: E402

NODE_NAME = "e2e-node"
MARKER = ".agent-operator-e2e-cluster"  # only a directory holding it is ever wiped
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
DEFAULT_DIR = CACHE / "agent-operator" / "cluster"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_binaries() -> Path:
    result = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-binaries.sh")],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit("hack/build-binaries.sh failed")
    return Path(result.stdout.strip().splitlines()[-1])


def fresh_dir(directory: Path) -> None:
    """Empty `directory` for a new cluster, refusing anything `up` did not create."""
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).exists():
            raise SystemExit(f"{directory} is not empty and was not made by `up`; not touching it")
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).touch()


def up(directory: Path, bin_dir: Path | None) -> None:
    running = recorded_alive(directory)
    if running:
        raise SystemExit(f"already running in {directory}: {', '.join(running)} (run `down` first)")
    fresh_dir(directory)
    plane = ControlPlane(bin_dir or build_binaries(), directory, detach=True)
    try:
        plane.start()
        say(f"control plane {plane.version} up in {plane.start_seconds:.1f}s at {plane.server}")
        credentials = plane.node_credentials(NODE_NAME)
        with (plane.logs / "kubelet.log").open("ab") as log:
            kubelet = subprocess.Popen(
                [
                    sys.executable, str(Path(__file__).resolve()), "kubelet",
                    f"--dir={directory}", f"--kubeconfig={credentials.kubeconfig}",
                    f"--serving-cert={credentials.serving_cert}",
                    f"--serving-key={credentials.serving_key}",
                    f"--client-ca={credentials.client_ca}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        record_process(directory, "kubelet", kubelet.pid)
        path = f"/api/v1/nodes/{NODE_NAME}"
        eventually(lambda: plane.get(path)[0] == 200, 30, f"node {NODE_NAME} to register")
    except (ClusterError, TimeoutError) as exc:
        stop_recorded(directory)
        raise SystemExit(f"cluster did not start: {exc}") from None
    say(f"node {NODE_NAME} registered; logs in {plane.logs}; stop with `make cluster-down`")
    print(plane.kubeconfig)


def down(directory: Path) -> None:
    stopped = stop_recorded(directory)
    say(f"stopped: {', '.join(stopped)}" if stopped else f"nothing running in {directory}")


def run_kubelet(args: argparse.Namespace) -> None:
    """The kubelet process `up` leaves behind; SIGTERM stops it and kills its pods."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    credentials = NodeCredentials(
        args.kubeconfig, args.serving_cert, args.serving_key, args.client_ca
    )
    kubelet = project_kubelet(credentials, args.dir / "kubelet", NODE_NAME)
    kubelet.start()
    logging.info("kubelet for node %s started", NODE_NAME)
    stop.wait()
    kubelet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, summary in (
        ("up", "start in the background; print the admin kubeconfig's path"),
        ("down", "stop what `up` started"),
        ("kubelet", "(run by `up`) the local kubelet, in the foreground"),
    ):
        command = commands.add_parser(name, help=summary)
        command.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    commands.choices["up"].add_argument("--bin-dir", type=Path)
    internal = commands.choices["kubelet"]
    for flag in ("--kubeconfig", "--serving-cert", "--serving-key", "--client-ca"):
        internal.add_argument(flag, type=Path, required=True)
    args = parser.parse_args()
    directory = args.dir.resolve()
    if args.command == "up":
        up(directory, args.bin_dir)
    elif args.command == "down":
        down(directory)
    else:
        args.dir = directory
        run_kubelet(args)


if __name__ == "__main__":
    main()
