"""Durable storage, only through Flyte's storage layer (`flyte.storage`).

Whatever storage the pod is configured for (file://, s3://, gs://, abfs://, or a local directory)
works, with the credentials Flyte's own storage layer reads from the environment. Every call here
is synchronous and runs its own event loop: callers are background threads and the command line,
never the training thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import flyte.storage as storage

T = TypeVar("T")


class Cancelled(Exception):
    """A storage call was cancelled (see `Calls.cancel`)."""


class Calls:
    """Storage calls that can all be cancelled at once, from any thread.

    Storage clients retry for minutes: a thread given up on would otherwise still be inside one
    when its process exits, and a storage client's own threads calling back into an interpreter
    that is shutting down can crash the process after its work is done.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = set()
        self._cancelled = False

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """`asyncio.run(coro)`, unless cancelled first or meanwhile.

        Raises:
            Cancelled: `cancel()` was called before or during the call.
        """

        async def tracked() -> T:
            task = asyncio.current_task()
            assert task is not None
            entry = (asyncio.get_running_loop(), task)
            with self._lock:
                if self._cancelled:
                    coro.close()
                    raise Cancelled("storage calls were cancelled")
                self._running.add(entry)
            try:
                return await coro
            finally:
                with self._lock:
                    self._running.discard(entry)

        try:
            return asyncio.run(tracked())
        except asyncio.CancelledError:
            raise Cancelled("storage call cancelled") from None

    def cancel(self) -> None:
        """Cancel the calls running now and refuse the next ones."""
        with self._lock:
            self._cancelled = True
            running = list(self._running)
        for loop, task in running:
            with contextlib.suppress(RuntimeError):  # its loop has just closed: the call is over
                loop.call_soon_threadsafe(task.cancel)


def _local(uri: str) -> Path | None:
    """The local path of `uri`, or `None` when it is remote."""
    if storage.is_remote(uri):
        return None
    return Path(uri.removeprefix("file://"))


def make_local_dir(uri: str) -> None:
    """Create the directory `uri` if it is local (remote storage has no directories to create)."""
    local = _local(uri)
    if local is not None:
        local.mkdir(parents=True, exist_ok=True)


def join(*parts: str) -> str:
    """`parts` joined with `/`, without doubled separators."""
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts) if p)


def put_bytes(uri: str, data: bytes, calls: Calls | None = None) -> None:
    """Write `data` as the object (or file) `uri`, replacing it (as one of `calls`, if given)."""
    local = _local(uri)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
    (calls.run if calls is not None else asyncio.run)(storage.put_stream(data, to_path=uri))


def read_bytes(uri: str) -> bytes | None:
    """The content of the object `uri`, or `None` when there is none."""
    local = _local(uri)
    if local is not None:
        return local.read_bytes() if local.is_file() else None

    async def read() -> bytes | None:
        if not await storage.exists(uri):
            return None
        return b"".join([chunk async for chunk in storage.get_stream(uri)])

    return asyncio.run(read())


def download_tree(uri: str, to: Path) -> Path:
    """Copy every object under `uri` into the directory `to`; returns the local root of the copy.

    A local `uri` is read where it is, not copied.

    Raises:
        FileNotFoundError: Nothing is stored under `uri`.
    """
    local = _local(uri)
    if local is not None:
        if not local.exists():
            raise FileNotFoundError(f"{uri}: no such directory")
        return local
    fs: Any = storage.get_underlying_filesystem(path=uri)
    found = fs.find(uri.split("://", 1)[1])
    if not found:
        raise FileNotFoundError(f"{uri}: nothing is stored there")
    to.mkdir(parents=True, exist_ok=True)
    asyncio.run(storage.get(uri, str(to), recursive=True))
    return to


def list_sizes(uri: str) -> dict[str, int]:
    """Every object (or file) under `uri`, by its path relative to `uri`, with its size in bytes."""
    local = _local(uri)
    if local is not None:
        if not local.is_dir():
            return {}
        return {p.relative_to(local).as_posix(): p.stat().st_size for p in local.rglob("*") if p.is_file()}
    fs: Any = storage.get_underlying_filesystem(path=uri)
    root = uri.split("://", 1)[1].rstrip("/")
    found = fs.find(root, detail=True)
    return {path[len(root) + 1 :]: int(info.get("size") or 0) for path, info in found.items() if path != root}
