"""A list+watch of Jobs or Pods filtered on the server by the operator's label selector.

Kopf sends no server-side selectors, so a Kopf handler on Jobs would list and
watch every Job of the cluster; this cache asks the API server for ours only.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Lister = Callable[..., Any]  # a kubernetes client list function (namespaced or for all)

RETRY_SECONDS = 2.0
WATCH_SECONDS = 300


class LabelledCache:
    """Objects of one kind that carry `selector`, indexed by the value of `index_label`."""

    def __init__(
        self,
        kind: str,
        listers: list[tuple[Lister, dict[str, str]]],
        selector: str,
        index_label: str,
        on_change: Callable[[str, Obj], None],
    ) -> None:
        self.kind = kind
        self._listers = listers  # (function, extra kwargs such as namespace=) per watched scope
        self._selector = selector
        self._index_label = index_label
        self._on_change = on_change
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], Obj] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watches: list[watch.Watch] = []
        self.relists = 0

    def start(self) -> None:
        for lister, kwargs in self._listers:
            thread = threading.Thread(
                target=self._run, args=(lister, kwargs), name=f"watch-{self.kind}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for stream in self._watches:
            stream.stop()
        for thread in self._threads:
            thread.join(timeout=5)

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def for_key(self, value: str) -> list[Obj]:
        with self._lock:
            return [
                o
                for o in self._objects.values()
                if o.get("metadata", {}).get("labels", {}).get(self._index_label) == value
            ]

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def all(self) -> list[Obj]:
        with self._lock:
            return list(self._objects.values())

    def _key(self, obj: Obj) -> tuple[str, str]:
        meta = obj.get("metadata", {})
        return meta.get("namespace", ""), meta.get("name", "")

    def _relist(self, lister: Lister, kwargs: dict[str, str]) -> str:
        response = lister(label_selector=self._selector, _preload_content=False, **kwargs)
        listing = json.loads(response.data)
        fresh = {self._key(o): o for o in listing.get("items", [])}
        scope = kwargs.get("namespace")
        with self._lock:
            stale = {k: o for k, o in self._objects.items() if scope is None or k[0] == scope}
            for key in stale:
                self._objects.pop(key)
            self._objects.update(fresh)
        self.relists += 1
        for key, obj in {**stale, **fresh}.items():
            self._notify("DELETED" if key not in fresh else "MODIFIED", obj)
        self._ready.set()
        return str(listing.get("metadata", {}).get("resourceVersion", ""))

    def _run(self, lister: Lister, kwargs: dict[str, str]) -> None:
        while not self._stop.is_set():
            try:
                version = self._relist(lister, kwargs)
                self._follow(lister, kwargs, version)
            except ApiException as error:
                if error.status != 410:
                    log.warning("watching %s failed (%s); listing again", self.kind, error.status)
                    self._stop.wait(RETRY_SECONDS)
            except Exception as error:  # connection drops: list again after a pause
                log.warning("watching %s failed: %s; listing again", self.kind, error)
                self._stop.wait(RETRY_SECONDS)

    def _follow(self, lister: Lister, kwargs: dict[str, str], version: str) -> None:
        stream = watch.Watch()
        self._watches.append(stream)
        try:
            for event in stream.stream(
                lister,
                label_selector=self._selector,
                resource_version=version,
                timeout_seconds=WATCH_SECONDS,
                allow_watch_bookmarks=True,
                **kwargs,
            ):
                if self._stop.is_set():
                    return
                kind, obj = event["type"], event["raw_object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return  # expired: the caller lists again
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                if kind == "BOOKMARK":
                    continue
                self._apply(kind, obj)
        finally:
            self._watches.remove(stream)

    def _apply(self, kind: str, obj: Obj) -> None:
        labels = obj.get("metadata", {}).get("labels", {})
        if self._index_label not in labels:
            return  # a server that ignores selectors (test emulators) may send others
        with self._lock:
            if kind == "DELETED":
                self._objects.pop(self._key(obj), None)
            else:
                self._objects[self._key(obj)] = obj
        self._notify(kind, obj)

    def _notify(self, kind: str, obj: Obj) -> None:
        try:
            self._on_change(kind, obj)
        except Exception:
            log.exception("handling a %s change failed", self.kind)
