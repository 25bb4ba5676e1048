"""How the local kubelet finds an image and the user a container runs as (localcluster/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from localcluster.images import Image, ImageStore
from localcluster.kubelet import ContainerConfigError, _identity


def stored(root: Path, name: str, tag: str, config: dict[str, Any]) -> Path:
    directory = root / name / tag
    (directory / "rootfs" / "etc").mkdir(parents=True)
    (directory / "image.json").write_text(json.dumps({"id": "sha256:ab", "config": config}))
    return directory / "rootfs"


@pytest.mark.parametrize(
    "reference",
    [
        "tool:1.0",
        "docker.io/library/tool:1.0",
        "localhost/tool:1.0",
        "registry.example:5000/team/tool:1.0@sha256:" + "0" * 64,
    ],
)
def test_a_reference_finds_the_stored_image_by_its_last_segment(
    tmp_path: Path, reference: str
) -> None:
    rootfs = stored(tmp_path, "tool", "1.0", {"Entrypoint": ["run"], "Env": ["A=1", "B=x=y"]})
    image = ImageStore(tmp_path).find(reference)
    assert image is not None
    assert (image.reference, image.rootfs, image.entrypoint) == ("tool:1.0", rootfs, ("run",))
    assert image.env == {"A": "1", "B": "x=y"}


@pytest.mark.parametrize("reference", ["tool", "tool:2.0", "other:1.0", "..:1.0", ""])
def test_anything_else_is_an_image_the_node_does_not_have(tmp_path: Path, reference: str) -> None:
    stored(tmp_path, "tool", "1.0", {})
    assert ImageStore(tmp_path).find(reference) is None


def test_no_tag_means_latest(tmp_path: Path) -> None:
    stored(tmp_path, "tool", "latest", {})
    assert ImageStore(tmp_path).find("tool") is not None


PASSWD = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"
GROUP = "root:x:0:\nstaff:x:50:\nwheel:x:10:root,app\n"


@pytest.mark.parametrize(
    ("user", "security", "expected"),
    [
        ("", {}, (0, 0)),
        ("1000", {}, (1000, 1001)),  # the primary group from the image's /etc/passwd
        ("app", {}, (1000, 1001)),
        ("app:staff", {}, (1000, 50)),
        ("65532:65532", {}, (65532, 65532)),
        ("4242", {}, (4242, 0)),  # a uid the image does not name: group 0, as a runtime does
        ("app", {"runAsUser": 7}, (7, 0)),
        ("app", {"runAsUser": 7, "runAsGroup": 8}, (7, 8)),
        ("ghost:nogroup", {"runAsUser": 1000}, (1000, 1001)),  # the image's USER is not used
    ],
)
def test_the_user_comes_from_the_security_context_else_the_image(
    tmp_path: Path, user: str, security: dict[str, int], expected: tuple[int, int]
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(PASSWD)
    (tmp_path / "etc" / "group").write_text(GROUP)
    image = Image("app:1", "sha256:ab", tmp_path, user=user)
    found = _identity(image, security)
    assert (found.uid, found.gid) == expected


def test_the_user_has_its_home_and_the_groups_the_image_lists_it_in(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(PASSWD)
    (tmp_path / "etc" / "group").write_text(GROUP)
    found = _identity(Image("app:1", "sha256:ab", tmp_path, user="app"), {})
    assert (found.home, found.groups) == ("/home/app", (10,))
    nobody = _identity(Image("app:1", "sha256:ab", tmp_path, user="4242"), {})
    assert (nobody.home, nobody.groups) == ("/", ())


def test_a_user_name_the_image_does_not_know_is_a_config_error(tmp_path: Path) -> None:
    image = Image("app:1", "sha256:ab", tmp_path, user="ghost")
    with pytest.raises(ContainerConfigError, match="unable to find user ghost"):
        _identity(image, {})
