"""Run a callback the moment a module finishes importing, in the thread that imports it.

A rank's run opens in a background thread, which imports wandb; the user's code may import it
too, first or at the same time. W&B's globals must be this rank's run before any of the user's
code can call `wandb.log`, so they are set as the last step of wandb's import itself, whichever
thread runs it: no window is left in between.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

logger = logging.getLogger("flyte_wandb_elastic")
_lock = threading.Lock()
_pending: dict[str, list[Callable[[], None]]] = {}


def after_import(name: str, callback: Callable[[], None]) -> None:
    """Call `callback` once module `name` is imported: now if it already is, else when its import ends."""
    with _lock:
        if name not in sys.modules:
            if name not in _pending:
                sys.meta_path.insert(0, _Finder(name))
            _pending.setdefault(name, []).append(callback)
            return
    callback()


def _run_pending(name: str) -> None:
    with _lock:
        callbacks = _pending.pop(name, [])
    for callback in callbacks:
        try:
            callback()
        except Exception as exc:  # never break the import itself
            logger.warning("after importing %s: %s", name, exc)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of one module so that its import ends with the callbacks."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if fullname != self.name:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)  # the real finders find the spec, once
        spec = None
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                break
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: ModuleType) -> None:
                loader.exec_module(module)
                _run_pending(fullname)

        spec.loader = _Loader()
        return spec
