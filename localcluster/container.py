"""Run one container from an image's root filesystem, as a container runtime would.

The local kubelet starts `python -m localcluster.container SPEC` for every container. This
shim, still root and on the host, makes new mount, PID, UTS and IPC namespaces and forks the
container's first process (PID 1 of its namespace), which:

- lays a fresh overlay over the image's root filesystem (the container's writable layer),
  makes the mount points it needs, and remounts the root read-only when
  `readOnlyRootFilesystem` asks;
- mounts a private /proc, a minimal /dev (null, zero, full, random, urandom, tty, shm, the
  termination message file), /etc/hosts, /etc/hostname, /etc/resolv.conf and the pod's
  volumes at their paths, read-only where asked;
- sets the hostname, chroots, drops the capabilities a runtime drops (all of them for a
  non-root user), sets no_new_privs when privilege escalation is not allowed, takes the
  requested uid, gid and groups, and execs the container's command.

The shim stays as the process the kubelet waits for: it passes SIGTERM and SIGINT on to the
container and exits with its status (128+n for signal n). PID 1 dies with the shim, and every
process of the namespace dies with PID 1. The network is the host's (every pod is 127.0.0.1).
An exec that fails leaves its reason in the spec's `start_error` file and exits 128, as a
runtime's StartError does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_CAPABILITIES", "ContainerSpec", "Mount", "main"]

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
START_ERROR_CODE = 128
MAX_SYMLINKS = 40
# What runc keeps a container from changing in /proc, and what it hides.
PROC_READ_ONLY = ("bus", "fs", "irq", "sys", "sysrq-trigger")
PROC_MASKED = ("kcore", "keys", "latency_stats", "timer_list", "timer_stats", "sched_debug")

# Linux capability numbers (capability.h), by the names Kubernetes uses.
CAPABILITIES = {
    name: number
    for number, name in enumerate(
        [
            "CHOWN",
            "DAC_OVERRIDE",
            "DAC_READ_SEARCH",
            "FOWNER",
            "FSETID",
            "KILL",
            "SETGID",
            "SETUID",
            "SETPCAP",
            "LINUX_IMMUTABLE",
            "NET_BIND_SERVICE",
            "NET_BROADCAST",
            "NET_ADMIN",
            "NET_RAW",
            "IPC_LOCK",
            "IPC_OWNER",
            "SYS_MODULE",
            "SYS_RAWIO",
            "SYS_CHROOT",
            "SYS_PTRACE",
            "SYS_PACCT",
            "SYS_ADMIN",
            "SYS_BOOT",
            "SYS_NICE",
            "SYS_RESOURCE",
            "SYS_TIME",
            "SYS_TTY_CONFIG",
            "MKNOD",
            "LEASE",
            "AUDIT_WRITE",
            "AUDIT_CONTROL",
            "SETFCAP",
            "MAC_OVERRIDE",
            "MAC_ADMIN",
            "SYSLOG",
            "WAKE_ALARM",
            "BLOCK_SUSPEND",
            "AUDIT_READ",
            "PERFMON",
            "BPF",
            "CHECKPOINT_RESTORE",
        ]
    )
}
# What containerd gives a container unless its securityContext adds or drops some, but
# MKNOD: without a device cgroup here, a device node would reach this machine's disks.
DEFAULT_CAPABILITIES = frozenset(
    [
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    ]
)
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


@dataclass(frozen=True)
class Mount:
    """A host file or directory bound at `target` inside the container."""

    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class ContainerSpec:
    """Everything the shim needs, written by the kubelet as JSON."""

    rootfs: str  # the image's root filesystem (never written to)
    layer: str  # a fresh directory for this run's writable layer
    argv: list[str]
    env: dict[str, str]
    uid: int
    gid: int
    groups: list[int] = field(default_factory=list)
    cwd: str = "/"
    hostname: str = "localhost"
    read_only_root: bool = False
    no_new_privs: bool = False
    capabilities: list[str] = field(default_factory=lambda: sorted(DEFAULT_CAPABILITIES))
    mounts: list[Mount] = field(default_factory=list)
    start_error: str = ""  # a host file for the reason an exec failed

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> ContainerSpec:
        raw: dict[str, Any] = json.loads(path.read_text())
        raw["mounts"] = [Mount(**m) for m in raw.get("mounts", [])]
        return cls(**raw)


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source or fstype} on {target}",
    )


def _bind(source: str, target: Path, read_only: bool) -> None:
    _mount(source, str(target), None, MS_BIND | MS_REC)
    if read_only:
        _mount(None, str(target), None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def _prctl(option: int, arg: int, arg3: int = 0) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(arg3), 0, 0), f"prctl {option}")


def _make_mount_point(path: Path, is_dir: bool) -> None:
    """Make a mount point (its parents too) where it is missing, as a runtime does."""
    if path.is_symlink() or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        path.mkdir()
    else:
        path.touch()


def _inside(root: Path, target: str) -> Path:
    """`target` as the container will see it, on the host: `..` never climbs above `root`,
    and every symlink on the way is resolved against `root`, never against the host."""
    pending = list(reversed(Path(target).parts))  # the next part last
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("/", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, f"too many levels of symbolic links in {target}")
            link = os.readlink(candidate)
            if link.startswith("/"):
                resolved = []
            pending.extend(reversed(Path(link).parts))
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def _prepare_root(spec: ContainerSpec) -> Path:
    """The container's root: an overlay on the image with /proc (its dangerous files
    masked), a minimal /dev and the mounts, shallowest first, each mount point made where
    it is missing; then read-only if asked."""
    layer = Path(spec.layer)
    upper, work, root = layer / "upper", layer / "work", layer / "root"
    for directory in (upper, work, root):
        directory.mkdir(parents=True, exist_ok=True)
    layers = f"lowerdir={spec.rootfs},upperdir={upper},workdir={work}"
    _mount("overlay", str(root), "overlay", MS_NODEV, layers)
    proc, dev = _inside(root, "/proc"), _inside(root, "/dev")
    _make_mount_point(proc, True)
    _mount("proc", str(proc), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_READ_ONLY:
        if (proc / name).exists():
            _bind(str(proc / name), proc / name, read_only=True)
    for name in PROC_MASKED:
        if (proc / name).exists():
            _bind("/dev/null", proc / name, read_only=True)
    _make_mount_point(dev, True)
    _mount("tmpfs", str(dev), "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=65536k")
    for name in DEVICES:
        (dev / name).touch()
        _bind(f"/dev/{name}", dev / name, read_only=False)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        (dev / name).symlink_to(target)
    (dev / "shm").mkdir()
    _mount("shm", str(dev / "shm"), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777")
    for mount in sorted(spec.mounts, key=lambda m: len(Path(m.target).parts)):
        point = _inside(root, mount.target)
        _make_mount_point(point, Path(mount.source).is_dir())
        _bind(mount.source, point, mount.read_only)
    _make_mount_point(_inside(root, spec.cwd), True)  # runc makes a missing working dir
    if spec.read_only_root:
        _mount(None, str(root), None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NODEV)
    return root


def _enter(root: Path) -> None:
    """Make `root` the root of the mount namespace and let go of the host's (pivot_root, as
    runtimes do: a chroot could be climbed out of by a process that may chroot)."""
    os.chdir(root)
    _check(_libc.syscall(SYS_PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the host's root")
    os.chdir("/")


def _drop_capabilities(keep: Sequence[str]) -> None:
    """Drop from the bounding set every capability not kept: a root process keeps only these
    across exec; a non-root one loses them all when it changes uid."""
    kept = {CAPABILITIES[name] for name in keep if name in CAPABILITIES}
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for number in range(last + 1):
        if number not in kept:
            _prctl(PR_CAPBSET_DROP, number)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def _become_container(spec: ContainerSpec) -> None:
    """In PID 1 of the new namespaces: build the root, take the identity, exec."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing of ours reaches the host
    root = _prepare_root(spec)
    _check(_libc.sethostname(spec.hostname.encode(), len(spec.hostname.encode())), "sethostname")
    _enter(root)
    _drop_capabilities(spec.capabilities)
    os.setgroups(spec.groups)
    os.setgid(spec.gid)
    os.setuid(spec.uid)
    if spec.no_new_privs:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
    try:
        os.chdir(spec.cwd)
    except OSError as error:
        message = f"chdir to working directory {spec.cwd!r}: {error.strerror}"
        raise OSError(error.errno, message) from None
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)  # Python ignores some; an exec keeps that
    try:
        os.execvpe(spec.argv[0], spec.argv, spec.env)
    except OSError as error:
        what = "executable file not found in $PATH" if error.errno == 2 else error.strerror
        raise OSError(error.errno, f"exec: {spec.argv[0]!r}: {what}") from None


def _wait(child: int) -> int:
    """Pass SIGTERM and SIGINT on to the container; its status as an exit code."""

    def forward(number: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, number)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def main(argv: Sequence[str] | None = None) -> int:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the kubelet gone: the container goes too
    spec = ContainerSpec.read(Path((argv or sys.argv[1:])[0]))
    # Not inheritable: a successful exec closes it, so only a failure writes to it.
    report = os.open(spec.start_error or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    _check(
        _libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC),
        "unshare",
    )
    child = os.fork()
    if child == 0:
        try:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # and with the shim
            _become_container(spec)
        except BaseException as error:  # whatever it is, PID 1 must not return into main
            reason = error.strerror if isinstance(error, OSError) else None
            os.write(report, str(reason or error).encode())
        os._exit(START_ERROR_CODE)
    os.close(report)
    return _wait(child)


if __name__ == "__main__":
    sys.exit(main())
