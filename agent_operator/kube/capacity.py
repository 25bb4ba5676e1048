"""Pool capacity shared by every task of a pool: FIFO among the tasks waiting for slots."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

PoolKey = tuple[str, str]  # namespace, name


@dataclass
class _Pool:
    running: set[str] = field(default_factory=set)  # Job names holding a slot
    waiting: OrderedDict[str, int] = field(default_factory=OrderedDict)  # task uid -> steps


class PoolLedger:
    """Which step Jobs hold a pool's slots and which tasks wait, first come first served.

    Jobs are counted the moment the operator creates them, not when the watch
    reports them, so two tasks deciding at once cannot both take the last slot.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[PoolKey, _Pool] = {}

    def free_for(self, pool: PoolKey, task_uid: str, replicas: int) -> int:
        """Slots this task may fill now: what is free after the tasks queued before it."""
        with self._lock:
            state = self._pools.setdefault(pool, _Pool())
            ahead = 0
            for uid, wanted in state.waiting.items():
                if uid == task_uid:
                    break
                ahead += wanted
            return max(0, replicas - len(state.running) - ahead)

    def hold(self, pool: PoolKey, job_names: list[str]) -> None:
        """Jobs that take a slot: counted when created, before any watch reports them."""
        with self._lock:
            self._pools.setdefault(pool, _Pool()).running.update(job_names)

    def release(self, pool: PoolKey, job_names: list[str]) -> None:
        """Jobs that no longer hold a slot (finished or gone)."""
        with self._lock:
            self._pools.setdefault(pool, _Pool()).running.difference_update(job_names)

    def wait(self, pool: PoolKey, task_uid: str, queued: int) -> None:
        """How many of a task's steps wait for this pool; a task keeps its place in line."""
        with self._lock:
            waiting = self._pools.setdefault(pool, _Pool()).waiting
            if queued:
                waiting[task_uid] = queued  # an existing key keeps its position
            else:
                waiting.pop(task_uid, None)

    def forget(self, task_uid: str) -> None:
        with self._lock:
            for state in self._pools.values():
                state.waiting.pop(task_uid, None)

    def usage(self, pool: PoolKey) -> tuple[int, int, list[str]]:
        """Running Jobs, queued steps, and the tasks waiting (in order)."""
        with self._lock:
            state = self._pools.get(pool, _Pool())
            return len(state.running), sum(state.waiting.values()), list(state.waiting)
