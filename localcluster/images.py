"""The images this node has: root filesystems exported by `make images` (hack/images.py).

A store holds `<name>/<tag>/rootfs/` (the image's files) and `<name>/<tag>/image.json`
(`{"id": "sha256:...", "config": {...}}`, the image's OCI config: Entrypoint, Cmd, Env,
User, WorkingDir). There is no registry here, so the node pulls nothing: an image that is not
in the store is one the node does not have.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Image", "ImageStore", "default_store"]


def default_store() -> Path:
    """$AGENT_OPERATOR_IMAGES, else where `make images` puts them."""
    configured = os.environ.get("AGENT_OPERATOR_IMAGES")
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "agent-operator" / "images"


@dataclass(frozen=True)
class Image:
    """One image as a container runtime needs it."""

    reference: str  # name:tag
    id: str
    rootfs: Path
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    working_dir: str = ""


def name_and_tag(reference: str) -> tuple[str, str]:
    """`docker.io/library/busybox:1.36`, `localhost/busybox:1.36` and `busybox:1.36@sha256:..`
    all name `busybox`, tag `1.36`; no tag means `latest`. The store keeps bare names, so
    only the reference's last path segment counts."""
    last = reference.split("@", 1)[0].rsplit("/", 1)[-1]
    name, _, tag = last.partition(":")
    return name, tag or "latest"


class ImageStore:
    """Reads images from a store directory; nothing here ever writes to it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find(self, reference: str) -> Image | None:
        name, tag = name_and_tag(reference)
        if not name or name.startswith(".") or tag.startswith("."):
            return None
        directory = self.root / name / tag
        try:
            described = json.loads((directory / "image.json").read_text())
        except (OSError, ValueError):
            return None
        rootfs = directory / "rootfs"
        if not rootfs.is_dir():
            return None
        config = described.get("config") or {}
        env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
        return Image(
            reference=f"{name}:{tag}",
            id=str(described.get("id", "")),
            rootfs=rootfs.resolve(),
            entrypoint=tuple(config.get("Entrypoint") or ()),
            cmd=tuple(config.get("Cmd") or ()),
            env=env,
            user=str(config.get("User") or ""),
            working_dir=str(config.get("WorkingDir") or ""),
        )
