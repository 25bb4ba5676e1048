#!/usr/bin/env python3
"""Build the project's container images and export them to the local image store.

There is no Docker engine and no registry on the project's machines, yet the local kubelet
(localcluster/) runs every container from its real image. So this builds the images here and
writes each one, unpacked, to a directory the kubelet reads:

    <store>/<name>/<tag>/rootfs/      the image's root filesystem (owners, modes, links kept)
    <store>/<name>/<tag>/image.json   {"id": "sha256:...", "config": {"Entrypoint", "Cmd",
                                       "Env", "User", "WorkingDir"}, "inputs": "<key>"}

The store is $AGENT_OPERATOR_IMAGES, by default ~/.cache/agent-operator/images. A tag's
directory is written beside its final place and renamed into it; further tags of the same
image are symlinks to the first tag's directory. Names are bare (`agent-runtime`).

Each image is rebuilt only when its inputs change: its key hashes everything it is made
from, and an image whose image.json carries the same key is left alone.

    busybox:1.36   from Debian's busybox-static package (apt-get download, dpkg -x)
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# The image's root filesystem, filled in; returns the image's id and its OCI config.
Builder = Callable[[Path], tuple[str, dict[str, Any]]]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """The project's cache, as hack/build-binaries.sh finds it."""
    if explicit := os.environ.get("AGENT_OPERATOR_CACHE_DIR"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agent-operator"


def store_dir() -> Path:
    """The image store the local kubelet reads (the same default on both sides)."""
    if explicit := os.environ.get("AGENT_OPERATOR_IMAGES"):
        return Path(explicit)
    return Path.home() / ".cache" / "agent-operator" / "images"


def digest(*parts: str | bytes) -> str:
    """sha256 of the parts, each length-prefixed so that no two lists hash alike."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def run(*argv: str | Path, cwd: Path | None = None, quiet: bool = True) -> str:
    """Run a command; its output is shown only when it fails (or when not quiet)."""
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if quiet else None,
        text=True,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout)
        raise SystemExit(f"[images] failed ({done.returncode}): {' '.join(map(str, argv))}")
    return done.stdout


def tree_id(root: Path) -> str:
    """A content id for a root filesystem: every path with its mode, owner and content."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            path = Path(dirpath, name)
            st = path.lstat()
            if path.is_symlink():
                content = os.readlink(path)
            elif path.is_file():
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = ""
            rel = path.relative_to(root)
            h.update(f"{rel}\0{st.st_mode:o}\0{st.st_uid}\0{st.st_gid}\0{content}\n".encode())
    return f"sha256:{h.hexdigest()}"


# ----------------------------------------------------------------------------- the store ---


def is_current(image_dir: Path, key: str) -> bool:
    try:
        recorded = json.loads((image_dir / "image.json").read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("inputs") == key and (image_dir / "rootfs").is_dir()


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def publish(image_dir: Path, key: str, build: Builder) -> None:
    """Build into a directory beside `image_dir`, then rename it into place."""
    image_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{image_dir.name}.build.", dir=image_dir.parent))
    try:
        tmp.chmod(0o755)
        rootfs = tmp / "rootfs"
        rootfs.mkdir(mode=0o755)
        image_id, config = build(rootfs)
        record = {"id": image_id, "config": config, "inputs": key}
        (tmp / "image.json").write_text(json.dumps(record, indent=2) + "\n")
        old = None
        if image_dir.exists() or image_dir.is_symlink():
            old = image_dir.with_name(f"{tmp.name}.old")
            image_dir.rename(old)
        tmp.rename(image_dir)
        if old is not None:
            _remove(old)
    except BaseException:
        _remove(tmp)
        raise


def link_tags(image_dir: Path, tags: list[str]) -> None:
    """Make each further tag a symlink to the image's directory."""
    for tag in tags:
        link = image_dir.with_name(tag)
        if link == image_dir or (link.is_symlink() and os.readlink(link) == image_dir.name):
            continue
        tmp = image_dir.with_name(f".{tag}.link.{os.getpid()}")
        _remove(tmp)
        tmp.symlink_to(image_dir.name)
        if link.exists() and not link.is_symlink():
            _remove(link)
        tmp.replace(link)


def config(
    *,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    env: list[str] | None = None,
    user: str = "",
    working_dir: str = "",
) -> dict[str, Any]:
    """The part of an OCI image config the kubelet runs a container by."""
    return {
        "Entrypoint": entrypoint,
        "Cmd": cmd,
        "Env": env or [],
        "User": user,
        "WorkingDir": working_dir,
    }


# ------------------------------------------------------------------------------- busybox ---

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"


def build_busybox(rootfs: Path) -> tuple[str, dict[str, Any]]:
    """busybox with its applets as symlinks, root and nobody, and a world-writable /tmp."""
    with tempfile.TemporaryDirectory() as tmp:
        run("apt-get", "download", "busybox-static", cwd=Path(tmp))
        (deb,) = Path(tmp).glob("busybox-static_*.deb")
        run("dpkg-deb", "-x", deb, Path(tmp, "x"))
        binary = Path(tmp, "x", "bin", "busybox")
        dirs = ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "run", "var")
        for name, mode in [*((d, 0o755) for d in dirs), ("home", 0o755), ("root", 0o700)]:
            (rootfs / name).mkdir(parents=True)
            (rootfs / name).chmod(mode)
        (rootfs / "tmp").mkdir()
        (rootfs / "tmp").chmod(0o1777)
        shutil.copyfile(binary, rootfs / "bin" / "busybox")
        (rootfs / "bin" / "busybox").chmod(0o755)
        applets = run(binary, "--list-full").split()
    for applet in applets:
        # `linuxrc` (an initrd's /linuxrc) has no place in a container.
        if applet != "bin/busybox" and "/" in applet:
            (rootfs / applet).symlink_to("/bin/busybox")
    (rootfs / "etc" / "passwd").write_text(PASSWD)
    (rootfs / "etc" / "group").write_text(GROUP)
    for path in (rootfs / "etc" / "passwd", rootfs / "etc" / "group"):
        path.chmod(0o644)
    return tree_id(rootfs), config(cmd=["sh"], env=[f"PATH={DEFAULT_PATH}"])


# ---------------------------------------------------------------------------------- main ---


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """One build at a time per cache, even across checkouts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for {path} (another build is running)")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def du_mb(path: Path) -> float:
    return int(run("du", "-sk", path).split()[0]) / 1024


def export(store: Path, name: str, tags: list[str], key: str, build: Builder) -> None:
    """Bring `name:tags` up to date in the store, saying what it cost."""
    start = time.monotonic()
    image_dir = store / name / tags[0]
    fresh = not is_current(image_dir, key)
    if fresh:
        publish(image_dir, key, build)
    link_tags(image_dir, tags[1:])
    what = "built" if fresh else "up to date"
    size = f", rootfs {du_mb(image_dir / 'rootfs'):.0f} MB" if fresh else ""
    refs = ", ".join(f"{name}:{t}" for t in tags)
    log(f"{refs}: {what} in {time.monotonic() - start:.1f}s{size}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("[images] run as root: the root filesystems keep their owners")
    store = store_dir()
    with locked(cache_dir() / "images.lock"):
        key = digest("busybox", inspect.getsource(build_busybox), PASSWD, GROUP)
        export(store, "busybox", ["1.36"], key, build_busybox)
    return 0


if __name__ == "__main__":
    sys.exit(main())
