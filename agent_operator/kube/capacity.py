"""Pool capacity shared by every task of a pool: FIFO among the tasks waiting for slots."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["PoolKey", "PoolLedger"]

PoolKey = tuple[str, str]  # namespace, name


@dataclass
class _Pool:
    running: set[str] = field(default_factory=set)  # Job names holding a slot
    unseen: dict[str, str] = field(default_factory=dict)  # taken, not yet watched: name -> uid
    reserved: dict[str, int] = field(default_factory=dict)  # task uid -> slots set aside
    waiting: OrderedDict[str, int] = field(default_factory=OrderedDict)  # task uid -> steps


class PoolLedger:
    """Which step Jobs hold a pool's slots and which tasks wait, first come first served.

    A pass sets its free slots aside (`reserve`) in the same lock acquisition that counts
    them, turns those it fills into Jobs (`take`) and gives the rest back (`settle`), so
    passes of several tasks deciding at once never share the last slot. Jobs are counted
    the moment the operator creates them, not when the watch reports them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[PoolKey, _Pool] = {}

    def reserve(self, pool: PoolKey, task_uid: str, replicas: int) -> int:
        """Set aside and return the slots this task may fill now: what is free after the
        slots other passes hold and the steps of the tasks queued before it."""
        with self._lock:
            state = self._pools.setdefault(pool, _Pool())
            ahead = 0
            for uid, wanted in state.waiting.items():
                if uid == task_uid:
                    break
                ahead += wanted
            others = sum(n for uid, n in state.reserved.items() if uid != task_uid)
            free = max(0, replicas - len(state.running) - others - ahead)
            state.reserved[task_uid] = free
            return free

    def take(self, pool: PoolKey, task_uid: str, job_names: list[str]) -> None:
        """Jobs this task is creating in slots it had set aside: held from the first try,
        so a creation that failed and is made again later still has its slot."""
        with self._lock:
            state = self._pools.setdefault(pool, _Pool())
            state.running.update(job_names)
            state.unseen.update(dict.fromkeys(job_names, task_uid))
            left = state.reserved.get(task_uid, 0) - len(job_names)
            if task_uid in state.reserved:
                state.reserved[task_uid] = max(0, left)

    def settle(self, task_uid: str) -> list[str]:
        """The pass is over: its unused slots go back. Returns the tasks to wake, those
        waiting or in a pass of their own on a pool that got slots back."""
        wake: list[str] = []
        with self._lock:
            for state in self._pools.values():
                if state.reserved.pop(task_uid, 0) > 0:
                    wake += [u for u in [*state.waiting, *state.reserved] if u != task_uid]
        return wake

    def hold(self, pool: PoolKey, job_names: list[str]) -> None:
        """Jobs that hold a slot, as the watch reports them (those of an earlier run)."""
        with self._lock:
            state = self._pools.setdefault(pool, _Pool())
            state.running.update(job_names)
            for name in job_names:
                state.unseen.pop(name, None)

    def release(self, pool: PoolKey, job_names: list[str]) -> None:
        """Jobs that no longer hold a slot (finished or gone)."""
        with self._lock:
            state = self._pools.setdefault(pool, _Pool())
            state.running.difference_update(job_names)
            for name in job_names:
                state.unseen.pop(name, None)

    def wait(self, pool: PoolKey, task_uid: str, queued: int) -> None:
        """How many of a task's steps wait for this pool; a task keeps its place in line."""
        with self._lock:
            waiting = self._pools.setdefault(pool, _Pool()).waiting
            if queued:
                waiting[task_uid] = queued  # an existing key keeps its position
            else:
                waiting.pop(task_uid, None)

    def forget(self, task_uid: str) -> None:
        """The task's loop ended: its place in line goes, and so do slots taken for Jobs
        that no watch ever reported (their creation never went through)."""
        with self._lock:
            for state in self._pools.values():
                state.waiting.pop(task_uid, None)
                state.reserved.pop(task_uid, None)
                never = [name for name, uid in state.unseen.items() if uid == task_uid]
                state.running.difference_update(never)
                for name in never:
                    del state.unseen[name]

    def wakeable(self, pool: PoolKey) -> list[str]:
        """Tasks to wake when a slot of the pool frees: those waiting in line and those in a
        pass (which may have counted the slot as taken)."""
        with self._lock:
            state = self._pools.get(pool, _Pool())
            return list(dict.fromkeys([*state.waiting, *state.reserved]))

    def usage(self, pool: PoolKey) -> tuple[int, int, list[str]]:
        """Running Jobs, queued steps, and the tasks waiting (in order)."""
        with self._lock:
            state = self._pools.get(pool, _Pool())
            return len(state.running), sum(state.waiting.values()), list(state.waiting)
