"""hack/images.py, offline: what a key covers, and how the image store is written.

`make images` itself (podman, debootstrap) runs before the tests (`make test` depends on it);
these check what its results rely on without building anything.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_images() -> ModuleType:
    spec = importlib.util.spec_from_file_location("images", ROOT / "hack" / "images.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["images"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


images = _load_images()


def _copy_sources(dockerfile: Path) -> list[str]:
    """What the Dockerfile's COPY instructions take from the build context."""
    text = dockerfile.read_text().replace("\\\n", " ")
    sources: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0].upper() == "COPY":
            assert not any(w.startswith("--from") for w in words), line
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


@pytest.mark.parametrize("image", images.PROJECT_IMAGES, ids=lambda i: i.name)
def test_the_key_covers_everything_the_dockerfile_copies(image: Any) -> None:
    """A COPY of a path the key does not hash would leave a stale image in the store."""
    sources = _copy_sources(ROOT / image.dockerfile)
    assert sources
    uncovered = [
        s for s in sources if not any(s == p or s.startswith(f"{p}/") for p in image.paths)
    ]
    assert uncovered == []
    files = image.files()
    assert image.dockerfile in files
    assert all(any(f == s or f.startswith(f"{s}/") for f in files) for s in sources)


def test_the_staged_context_holds_exactly_the_hashed_files(tmp_path: Path) -> None:
    image = images.PROJECT_IMAGES[1]
    image.stage(tmp_path)
    staged = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert staged == image.files()
    assert all(p.stat().st_mtime == images.EPOCH for p in tmp_path.rglob("*"))
    assert not any("__pycache__" in name for name in staged)


def _builder(content: str) -> Any:
    def build(rootfs: Path) -> tuple[str, dict[str, Any]]:
        (rootfs / "marker").write_text(content)
        return f"sha256:{content}", images.config(cmd=["sh"])

    return build


def test_publish_replaces_an_image_whole_and_other_tags_follow(tmp_path: Path) -> None:
    store = tmp_path / "store"
    images.export(store, "thing", ["1.0", "e2e"], "key-a", _builder("a"))
    images.export(store, "thing", ["1.0", "e2e"], "key-b", _builder("b"))
    image = store / "thing" / "1.0"
    assert (image / "rootfs" / "marker").read_text() == "b"
    assert json.loads((image / "image.json").read_text()) == {
        "id": "sha256:b",
        "config": {"Entrypoint": None, "Cmd": ["sh"], "Env": [], "User": "", "WorkingDir": ""},
        "inputs": "key-b",
    }
    e2e = store / "thing" / "e2e"
    assert e2e.is_symlink() and e2e.resolve() == image.resolve()
    assert sorted(p.name for p in (store / "thing").iterdir()) == ["1.0", "e2e"]
    assert images.is_current(image, "key-b") and not images.is_current(image, "key-a")


def test_an_up_to_date_image_is_not_built_again(tmp_path: Path) -> None:
    images.export(tmp_path, "thing", ["1.0"], "key", _builder("a"))

    def fail(rootfs: Path) -> tuple[str, dict[str, Any]]:
        raise AssertionError("built again")

    images.export(tmp_path, "thing", ["1.0", "extra"], "key", fail)
    assert (tmp_path / "thing" / "extra" / "rootfs" / "marker").read_text() == "a"


def test_a_failed_build_leaves_the_previous_image_and_no_debris(tmp_path: Path) -> None:
    images.export(tmp_path, "thing", ["1.0"], "key-a", _builder("a"))

    def broken(rootfs: Path) -> tuple[str, dict[str, Any]]:
        (rootfs / "half").write_text("written")
        raise RuntimeError("the build failed")

    with pytest.raises(RuntimeError):
        images.export(tmp_path, "thing", ["1.0"], "key-b", broken)
    assert [p.name for p in (tmp_path / "thing").iterdir()] == ["1.0"]
    assert images.is_current(tmp_path / "thing" / "1.0", "key-a")


def test_a_killed_build_is_cleared_by_the_next(tmp_path: Path) -> None:
    killed = tmp_path / "thing" / ".1.0.build.x1y2"
    (killed / "rootfs").mkdir(parents=True)
    images.export(tmp_path, "thing", ["1.0"], "key", _builder("a"))
    assert [p.name for p in (tmp_path / "thing").iterdir()] == ["1.0"]


def test_the_operator_entrypoint_answers_help_without_starting() -> None:
    """The operator image's ENTRYPOINT, `python -m agent_operator`: `--help` must not run Kopf."""
    done = subprocess.run(
        [sys.executable, "-m", "agent_operator", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m agent_operator")
    wrong = subprocess.run(
        [sys.executable, "-m", "agent_operator", "run"], capture_output=True, text=True
    )
    assert wrong.returncode == 2
    assert "unrecognized arguments: run" in wrong.stderr
