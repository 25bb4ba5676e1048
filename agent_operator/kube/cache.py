"""A list+watch of Jobs or Pods filtered on the server by the operator's label selector.

Kopf sends no server-side selectors, so a Kopf handler on Jobs would list and watch
every Job of the cluster; this cache asks the API server for ours only. It lists once,
then follows the watch from the last resourceVersion it saw (bookmarks included), and
lists again only when the server says that version is gone (410) or the stream broke.
Objects are indexed by the task they belong to, and a change wakes only that task.

A deleted object is kept for a while as a tombstone with its last state: a Job removed
by its TTL (with its pod) right after it finished still tells how the attempt ended.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

__all__ = ["GONE_SECONDS", "LabelledCache", "Obj"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]  # namespace, name
Lister = Callable[..., Any]  # a kubernetes client list function (namespaced or for all)

RETRY_SECONDS = 2.0
WATCH_SECONDS = 300
GONE_SECONDS = 600.0  # how long a deleted object's last state is kept


class LabelledCache:
    """Objects of one kind that carry `selector`, indexed by the value of `index_label`."""

    def __init__(
        self,
        kind: str,
        listers: list[tuple[Lister, dict[str, str]]],
        selector: str,
        index_label: str,
        on_change: Callable[[str, Obj], None],
        watch_seconds: int = WATCH_SECONDS,
    ) -> None:
        self.kind = kind
        self._listers = listers  # (function, extra kwargs such as namespace=) per watched scope
        self._selector = selector
        self._index_label = index_label
        self._on_change = on_change
        self._watch_seconds = watch_seconds
        self._lock = threading.Lock()
        self._objects: dict[Key, Obj] = {}
        self._by_index: dict[str, set[Key]] = {}
        self._gone: OrderedDict[Key, tuple[Obj, float]] = OrderedDict()  # oldest first
        self._gone_by_index: dict[str, set[Key]] = {}
        self._puts = 0  # how many objects `put` has stored
        self._put_at: dict[Key, int] = {}  # which put stored each of them
        self._stop = threading.Event()
        self._ready = [threading.Event() for _ in listers]
        self._threads: list[threading.Thread] = []
        self._watches: list[watch.Watch] = []
        self.relists = 0

    def start(self) -> None:
        for scope, (lister, kwargs) in enumerate(self._listers):
            thread = threading.Thread(
                target=self._run,
                args=(scope, lister, kwargs),
                name=f"watch-{self.kind}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for stream in list(self._watches):
            stream.stop()
        for thread in self._threads:
            thread.join(timeout=5)

    def wait_ready(self, timeout: float) -> bool:
        """Whether every scope has been listed once within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        return all(e.wait(max(0.0, deadline - time.monotonic())) for e in self._ready)

    @property
    def ready(self) -> bool:
        return all(e.is_set() for e in self._ready)

    def for_key(self, value: str) -> list[Obj]:
        """The live objects of one index value (one task)."""
        with self._lock:
            return [self._objects[k] for k in self._by_index.get(value, ())]

    def gone_for_key(self, value: str) -> list[Obj]:
        """The last state of the objects of one index value deleted not long ago."""
        with self._lock:
            self._expire(time.monotonic())
            return [self._gone[k][0] for k in self._gone_by_index.get(value, ())]

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def all(self) -> list[Obj]:
        with self._lock:
            return list(self._objects.values())

    def put(self, obj: Obj) -> None:
        """An object this operator has just created or read: known before the watch says so.

        The watch may have brought its creation and its deletion before the creator puts
        it (someone deleted it at once); a deletion seen at this version or later wins, or
        the object would live on in the cache and its attempt never be called lost."""
        with self._lock:
            key = _key(obj)
            known = self._objects.get(key)
            gone = self._gone.get(key)
            if gone is not None and _version(obj) <= _version(gone[0]):
                return
            if known is None or _version(known) <= _version(obj):
                self._store(key, obj)
                self._puts += 1
                self._put_at[key] = self._puts

    # --- the watch --------------------------------------------------------------

    def _index_of(self, obj: Obj) -> str | None:
        labels: dict[str, str] = obj.get("metadata", {}).get("labels") or {}
        return labels.get(self._index_label)

    def _store(self, key: Key, obj: Obj) -> None:
        """Under the lock."""
        self._drop(key)
        self._objects[key] = obj
        self._unbury(key)
        index = self._index_of(obj)
        if index is not None:
            self._by_index.setdefault(index, set()).add(key)

    def _bury(self, key: Key, obj: Obj) -> None:
        """Under the lock: keep a deleted object's last state, indexed like the live ones."""
        self._unbury(key)
        self._gone[key] = (obj, time.monotonic())
        self._gone_by_index.setdefault(self._index_of(obj) or "", set()).add(key)

    def _unbury(self, key: Key) -> None:
        """Under the lock."""
        gone = self._gone.pop(key, None)
        if gone is not None:
            index = self._index_of(gone[0]) or ""
            keys = self._gone_by_index.get(index)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._gone_by_index[index]

    def _expire(self, now: float) -> None:
        """Under the lock: forget tombstones older than GONE_SECONDS (the oldest come first)."""
        while self._gone:
            key, (_, when) = next(iter(self._gone.items()))
            if now - when <= GONE_SECONDS:
                return
            self._unbury(key)

    def _drop(self, key: Key) -> Obj | None:
        """Under the lock."""
        self._put_at.pop(key, None)
        old = self._objects.pop(key, None)
        if old is not None:
            index = self._index_of(old)
            keys = self._by_index.get(index or "")
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_index[index or ""]
        return old

    def _relist(self, scope: int, lister: Lister, kwargs: dict[str, str]) -> str:
        with self._lock:
            puts_before = self._puts  # what is put while the list is made, it cannot show
        response = lister(label_selector=self._selector, _preload_content=False, **kwargs)
        listing = json.loads(response.data)
        fresh = {_key(o): o for o in listing.get("items", []) if self._index_of(o) is not None}
        namespace = kwargs.get("namespace")
        changed: list[tuple[str, Obj]] = []
        with self._lock:
            mine = [k for k in self._objects if namespace is None or k[0] == namespace]
            for key in mine:
                if key not in fresh and self._put_at.get(key, 0) <= puts_before:
                    old = self._drop(key)
                    if old is not None:
                        self._bury(key, old)
                        changed.append(("DELETED", old))
            for key, obj in fresh.items():
                known = self._objects.get(key)
                if known != obj:
                    self._store(key, obj)
                    changed.append(("ADDED" if known is None else "MODIFIED", obj))
        self.relists += 1
        self._ready[scope].set()
        for kind, obj in changed:
            self._notify(kind, obj)
        return str(listing.get("metadata", {}).get("resourceVersion", ""))

    def _run(self, scope: int, lister: Lister, kwargs: dict[str, str]) -> None:
        """List once, then watch from the last version seen; a watch that ended or broke
        is resumed from there, and only a version the server no longer has (410) or a
        failed list leads to listing again."""
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._relist(scope, lister, kwargs)
                version = self._follow(lister, kwargs, version)
            except ApiException as error:
                if error.status == 410:
                    version = None
                    continue
                log.warning("watching %s failed (%s); resuming", self.kind, error.status)
                self._stop.wait(RETRY_SECONDS)
            except Exception as error:  # a dropped connection: resume after a pause
                log.warning("watching %s failed: %s; resuming", self.kind, error)
                self._stop.wait(RETRY_SECONDS)

    def _follow(self, lister: Lister, kwargs: dict[str, str], version: str) -> str | None:
        """Follow the watch from `version` until it times out; the version to resume from,
        or None when the server says it is too old (list again)."""
        stream = watch.Watch()
        self._watches.append(stream)
        try:
            for event in stream.stream(
                lister,
                label_selector=self._selector,
                resource_version=version,
                timeout_seconds=self._watch_seconds,
                allow_watch_bookmarks=True,
                **kwargs,
            ):
                if self._stop.is_set():
                    return version
                kind, obj = event["type"], event["raw_object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return None  # expired: list again
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                version = obj.get("metadata", {}).get("resourceVersion") or version
                if kind != "BOOKMARK":
                    self._apply(kind, obj)
        finally:
            self._watches.remove(stream)
        return version

    def _apply(self, kind: str, obj: Obj) -> None:
        if self._index_of(obj) is None:
            return  # a server that ignores selectors (test emulators) may send others
        key = _key(obj)
        with self._lock:
            if kind == "DELETED":
                self._drop(key)
                self._bury(key, obj)
            elif self._objects.get(key) == obj:
                return  # nothing new (a resumed watch may send what it sent before)
            else:
                self._store(key, obj)
        self._notify(kind, obj)

    def _notify(self, kind: str, obj: Obj) -> None:
        try:
            self._on_change(kind, obj)
        except Exception:
            log.exception("handling a %s change failed", self.kind)


def _key(obj: Obj) -> Key:
    meta = obj.get("metadata", {})
    return meta.get("namespace", ""), meta.get("name", "")


def _version(obj: Obj) -> int:
    """resourceVersion as a number, to keep the newer of two views (0 when unknown)."""
    value = str(obj.get("metadata", {}).get("resourceVersion") or "0")
    return int(value) if value.isdigit() else 0
