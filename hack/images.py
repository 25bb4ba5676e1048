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

    busybox:1.36          from Debian's busybox-static package (apt-get download, dpkg -x)
    agent-base:<key>      debootstrap (minbase, bookworm) with python3, python3-venv and
                          ca-certificates, `podman import`ed: the BASE of the two below;
                          only in podman's storage, with its tarball cached
    agent-operator, agent-runtime
                          docker/*.Dockerfile built by `podman build --isolation=chroot`,
                          tagged with the project's version, `e2e` and $IMAGE_TAG if set

Podman keeps its storage (and so its layer cache) in the project's cache:
<cache>/podman/root. With `--builder docker` (machines with Docker, hack/kind-e2e.sh) the
two project images are built by `docker build` with the Dockerfiles' default BASE and the
same tags, and nothing is exported.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from localcluster.images import default_store  # noqa: E402  (the store the kubelet reads)

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


def digest(*parts: str | bytes) -> str:
    """sha256 of the parts, each length-prefixed so that no two lists hash alike."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def run(*argv: str | Path, cwd: Path | None = None) -> str:
    """Run a command and return its output, shown only when it fails."""
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
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
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


def publish(image_dir: Path, key: str, build: Builder) -> None:
    """Build into a directory beside `image_dir`, then rename it into place."""
    image_dir.parent.mkdir(parents=True, exist_ok=True)
    for debris in image_dir.parent.glob(f".{image_dir.name}.build.*"):
        _remove(debris)  # a killed build's (builds hold the lock: none is running)
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


# ---------------------------------------------------------------------------- agent-base ---

BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# What an image needs no copy of: apt's caches and lists, documentation (but the copyright
# files), translations, device nodes (a runtime makes its own) and the host's name and DNS.
BASE_PRUNE = (
    "var/cache/apt/*",
    "var/lib/apt/lists/*",
    "var/log/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "dev/*",
    "etc/hostname",
    "etc/resolv.conf",
)


def debian_mirror() -> str | None:
    """The Debian archive this machine's apt uses, so debootstrap reaches what apt reaches."""
    found: list[tuple[str, list[str]]] = []
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and line[0] != "#"
            )
            if "deb" in fields.get("Types", "").split():
                for uri in fields.get("URIs", "").split():
                    found.append((uri, fields.get("Suites", "").split()))
    for path in [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]:
        lines = path.read_text().splitlines() if path.is_file() else []
        for words in (line.split() for line in lines):
            words = [w for w in words if not w.startswith("[") and not w.endswith("]")]
            if len(words) >= 3 and words[0] == "deb":
                found.append((words[1], [words[2]]))
    for uri, suites in found:
        if BASE_SUITE in suites:
            return uri
    return None


def build_base(tarball: Path) -> None:
    """A minimal Debian with Python, as a root filesystem tarball for `podman import`."""
    with tempfile.TemporaryDirectory(dir=tarball.parent) as tmp:
        rootfs = Path(tmp, "rootfs")
        mirror = debian_mirror()
        argv = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}"]
        argv += [BASE_SUITE, str(rootfs), *([mirror] if mirror else [])]
        run("nice", "-n", "10", *argv)
        for pattern in BASE_PRUNE:
            for path in rootfs.glob(pattern):
                _remove(path)
        for path in (rootfs / "usr/share/doc").glob("*/*"):
            if path.name != "copyright":
                _remove(path)
        run("tar", "--numeric-owner", "-C", rootfs, "-cf", Path(tmp, "rootfs.tar"), ".")
        Path(tmp, "rootfs.tar").replace(tarball)


def base_key() -> str:
    return digest(
        "agent-base", BASE_SUITE, *BASE_PACKAGES, *BASE_PRUNE, inspect.getsource(build_base)
    )


# ---------------------------------------------------------------------------------- podman ---


class Podman:
    """podman with the project's own storage, so its layers are cached between runs.

    Nothing runs until the first command: an up-to-date store never starts podman.
    """

    def __init__(self, cache: Path) -> None:
        self.root = cache / "podman" / "root"
        self.used = False

    @functools.cached_property
    def flags(self) -> list[str]:
        runroot = Path(tempfile.gettempdir(), f"agent-operator-podman-{os.geteuid()}")
        flags = [f"--root={self.root}", f"--runroot={runroot}"]
        flags += ["--cgroup-manager=cgroupfs", "--events-backend=file"]
        # Overlay where the kernel has it, else vfs (whole copies); a storage keeps its driver.
        for driver in ("overlay", "vfs"):
            probe = subprocess.run(
                ["podman", *flags, f"--storage-driver={driver}", "images", "-q"],
                capture_output=True,
                text=True,
            )
            if probe.returncode == 0:
                self.used = True
                return [*flags, f"--storage-driver={driver}"]
        raise SystemExit(f"[images] podman cannot use {self.root}: {probe.stderr.strip()}")

    def __call__(self, *argv: str | Path, nice: bool = False) -> str:
        return run(*(["nice", "-n", "10"] if nice else []), "podman", *self.flags, *argv)

    def exists(self, ref: str) -> bool:
        done = subprocess.run(["podman", *self.flags, "image", "exists", ref])
        return done.returncode == 0

    def tags(self, repository: str) -> list[str]:
        out = self("images", "--format", "{{.Repository}}:{{.Tag}}", repository)
        return out.split()


def ensure_base(podman: Podman, cache: Path, key: str) -> str:
    """The base image in podman's storage: imported from the cached tarball, made if need be."""
    ref = f"localhost/agent-base:{key[:16]}"
    if podman.exists(ref):
        return ref
    start = time.monotonic()
    bases = cache / "base"
    bases.mkdir(parents=True, exist_ok=True)
    tarball = bases / f"{key[:16]}.tar"
    if not tarball.exists():
        log(f"{ref}: debootstrap {BASE_SUITE} with {', '.join(BASE_PACKAGES)} ...")
        build_base(tarball)
    for stale in bases.glob("*.tar"):
        if stale != tarball:
            stale.unlink()
    podman(
        "import", "--change", f"ENV=PATH={DEFAULT_PATH}", "--change", 'CMD=["bash"]', tarball, ref
    )
    for stale_ref in podman.tags("localhost/agent-base"):
        if stale_ref != ref:
            podman("rmi", stale_ref)
    log(f"{ref}: made in {time.monotonic() - start:.1f}s ({tarball.stat().st_size >> 20} MB tar)")
    return ref


# ------------------------------------------------------------------------ project images ---

# Copied files get this mtime (1980-01-01, the zip epoch): the build's layer cache then sees
# content only, the same in every clone.
EPOCH = 315532800


@dataclass(frozen=True)
class ProjectImage:
    """One of docker/*.Dockerfile and the paths its COPY lines take from the context."""

    name: str
    dockerfile: str
    paths: tuple[str, ...]

    def files(self) -> list[str]:
        """The files copied in: those git knows (tracked, or new and not ignored)."""
        out = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                  "--", self.dockerfile, *self.paths, cwd=ROOT)  # fmt: skip
        return sorted({f for f in out.split("\0") if f and (ROOT / f).is_file()})

    def key(self, base: str) -> str:
        parts: list[str | bytes] = [self.name, base]
        for name in self.files():
            path = ROOT / name
            parts += [name, "x" if os.access(path, os.X_OK) else "-", path.read_bytes()]
        return digest(*parts)

    def stage(self, context: Path) -> None:
        """A build context of exactly the files the key was made from."""
        for name in self.files():
            target = context / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / name, target)
            target.chmod(0o755 if os.access(ROOT / name, os.X_OK) else 0o644)
        for dirpath, _, filenames in os.walk(context):
            for name in filenames:
                os.utime(Path(dirpath, name), (EPOCH, EPOCH))
        for dirpath, _, _ in sorted(os.walk(context), reverse=True):
            Path(dirpath).chmod(0o755)
            os.utime(dirpath, (EPOCH, EPOCH))


PROJECT_IMAGES = (
    ProjectImage(
        "agent-operator",
        "docker/operator.Dockerfile",
        (
            "requirements/operator.txt",
            "requirements/build.txt",
            "pyproject.toml",
            "README.md",
            "agent_contract",
            "agent_operator",
            "agent_runtime",
        ),
    ),
    ProjectImage(
        "agent-runtime",
        "docker/runtime.Dockerfile",
        (
            "requirements/runtime.txt",
            "requirements/build.txt",
            "runtime/pyproject.toml",
            "agent_contract",
            "agent_runtime",
        ),
    ),
)


def host_ca_bundle() -> Path | None:
    """The CA bundle this machine's pip trusts: builds reach PyPI through the same network."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    default = Path("/etc/ssl/certs/ca-certificates.crt")
    return default if default.is_file() else None


def podman_builder(
    podman: Podman, image: ProjectImage, base: Callable[[], str], tags: list[str], previous: Path
) -> Builder:
    """Build with podman (chroot isolation: no OCI runtime needed), then copy the image out.

    The copy hard-links each file whose content and metadata equal those of the `previous`
    export's (rsync --link-dest): after a code change, only the changed files are written.
    """

    def build(rootfs: Path) -> tuple[str, dict[str, Any]]:
        refs = [f"localhost/{image.name}:{tag}" for tag in tags]
        base_ref = base()
        ca = host_ca_bundle()
        start = time.monotonic()
        with tempfile.TemporaryDirectory() as context:
            image.stage(Path(context))
            out = podman(
                "build", "--isolation=chroot", "--pull=never", "--layers",
                "--file", ROOT / image.dockerfile, "--build-arg", f"BASE={base_ref}",
                *(["--volume", f"{ca}:/run/host-ca.crt:ro", "--build-arg",
                   "PIP_CERT=/run/host-ca.crt"] if ca else []),
                *(f"--tag={ref}" for ref in refs), context, nice=True,
            )  # fmt: skip
        steps = sum(line.startswith("STEP ") for line in out.splitlines())
        cached = out.count("--> Using cache")
        built_in, start = time.monotonic() - start, time.monotonic()
        (inspected,) = json.loads(podman("image", "inspect", refs[0]))
        mountpoint = podman("image", "mount", refs[0]).strip()
        try:
            link = [f"--link-dest={previous}"] if previous.is_dir() else []
            run("rsync", "-aHXc", "--numeric-ids", *link, f"{mountpoint}/", rootfs)
        finally:
            podman("image", "unmount", refs[0])
        log(
            f"{image.name}: podman build {built_in:.1f}s ({cached} of {steps} steps cached), "
            f"rootfs copied out in {time.monotonic() - start:.1f}s"
        )
        oci = inspected.get("Config") or {}
        return f"sha256:{inspected['Id']}", config(
            entrypoint=oci.get("Entrypoint"),
            cmd=oci.get("Cmd"),
            env=oci.get("Env"),
            user=oci.get("User", ""),
            working_dir=oci.get("WorkingDir", ""),
        )

    return build


def docker_build(image: ProjectImage, tags: list[str]) -> None:
    """For machines with Docker: the same Dockerfile, its default BASE, the same tags."""
    start = time.monotonic()
    tag_flags = [f"--tag={image.name}:{tag}" for tag in tags]
    run("docker", "build", "--file", image.dockerfile, *tag_flags, ".", cwd=ROOT)
    refs = ", ".join(f"{image.name}:{t}" for t in tags)
    log(f"{refs}: built by docker in {time.monotonic() - start:.1f}s")


def project_tags() -> list[str]:
    """The project's version (the chart's default tag), `e2e`, and $IMAGE_TAG if given."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    tags = [str(version), "e2e", os.environ.get("IMAGE_TAG", "")]
    return list(dict.fromkeys(t for t in tags if t))


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
    parser.add_argument(
        "--builder",
        choices=("podman", "docker"),
        default="podman",
        help="podman: build here and export to the store (default); docker: docker build only",
    )
    args = parser.parse_args(argv)
    tags = project_tags()
    if args.builder == "docker":
        for image in PROJECT_IMAGES:
            docker_build(image, tags)
        return 0
    if os.geteuid() != 0:
        raise SystemExit("[images] run as root: the root filesystems keep their owners")
    store, cache = default_store(), cache_dir()
    with locked(cache / "images.lock"):
        key = digest("busybox", inspect.getsource(build_busybox), PASSWD, GROUP)
        export(store, "busybox", ["1.36"], key, build_busybox)
        base, podman = base_key(), Podman(cache)
        for image in PROJECT_IMAGES:
            previous = store / image.name / tags[0] / "rootfs"
            build = podman_builder(
                podman, image, lambda: ensure_base(podman, cache, base), tags, previous
            )
            export(store, image.name, tags, image.key(base), build)
        if podman.used:
            podman("image", "prune", "--force")  # the untagged images older builds left
    return 0


if __name__ == "__main__":
    sys.exit(main())
