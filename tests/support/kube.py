"""kmock's Kubernetes emulator served on its own event loop, and a kubeconfig that points at it."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmock import KubernetesEmulator, Server


@dataclass
class Served:
    emulator: Any  # a KubernetesEmulator (or subclass)
    url: str
    kubeconfig: Path
    loop: asyncio.AbstractEventLoop


def write_kubeconfig(path: Path, server: str, token: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    return path


@contextmanager
def serve_emulator(
    directory: Path,
    setup: Callable[[Any], None],
    token: str,
    emulator_class: type[KubernetesEmulator] = KubernetesEmulator,
) -> Iterator[Served]:
    """Run the emulator in a thread (so tests stay synchronous); `setup` declares resources."""
    started = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        async with emulator_class() as emulator, Server(emulator) as server:
            setup(emulator)
            stop = asyncio.Event()
            state.update(emulator=emulator, url=str(server.url).rstrip("/"), stop=stop)
            state["loop"] = asyncio.get_running_loop()
            started.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(30), "the emulator did not start"
    path = write_kubeconfig(directory / "kubeconfig", state["url"], token)
    try:
        yield Served(state["emulator"], state["url"], path, state["loop"])
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(30)
