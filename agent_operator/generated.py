"""Files generated from the models: compared, reported and written the same way everywhere."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


class GenerationError(Exception):
    """The sources cannot be turned into the generated files; the message says why."""


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def stale(root: Path, wanted: dict[str, str], header: str, owned_dir: str = "") -> list[str]:
    """Files under root that differ or are missing, and generated ones no longer made."""
    names = [n for n, text in wanted.items() if _read(root / n) != text]
    prefix = f"{owned_dir}/" if owned_dir else ""
    leftovers = [
        prefix + p.name
        for p in (root / owned_dir).glob("*.yaml")
        if prefix + p.name not in wanted and (_read(p) or "").startswith(header)
    ]
    return sorted(names + leftovers)


def command(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    default_root: str,
    generate: Callable[[Path], dict[str, str]],
    header: str,
    owned_dir: str = "",
    remedy: str,
) -> int:
    """`prog [--check] [root]`: write what is stale, or (--check) name it and exit 1."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 naming stale files"
    )
    parser.add_argument("root", nargs="?", default=default_root, type=Path)
    args = parser.parse_args(argv)
    root: Path = args.root
    try:
        wanted = generate(root)
    except (GenerationError, OSError) as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    outdated = stale(root, wanted, header, owned_dir)
    if args.check:
        for name in outdated:
            print(f"stale: {root / name}", file=sys.stderr)
        if outdated:
            print(remedy, file=sys.stderr)
        return 1 if outdated else 0
    for name in outdated:
        path = root / name
        if name in wanted:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(wanted[name], encoding="utf-8")
            print(f"wrote {path}")
        else:
            path.unlink()
            print(f"removed {path}")
    return 0
