"""Durable storage, only through Flyte's storage layer (`flyte.storage`).

Whatever storage the pod is configured for (file://, s3://, gs://, abfs://, or a local directory)
works, with the credentials Flyte's own storage layer reads from the environment. Every call here
is synchronous and runs its own event loop: callers are background threads and the command line,
never the training thread.

Writes (`put_bytes`, `delete`) retry on their own terms (`WRITE_RETRY`), not on Flyte's: a bucket
under load (S3's 503 SlowDown, GCS's 429) refuses requests for a while, and Flyte's storage layer
waits 5 s, then up to 10 s and 16 s between tries of one request (about 30 s), longer than a
copy's interval or a rank's share of its end. Reads keep Flyte's retries: `sync` and `inspect`
would rather wait than fail.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import sys
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import flyte.storage as storage

from ._procfs import threads_named

T = TypeVar("T")

# Requests a reader makes at a time (reads of many small objects are bound by round trips).
PARALLEL = 64
# The longest a paced reader works before it sleeps (see `Pace`).
BURST_S = 0.001
# How a write refused by the store (any 5xx, S3's 503 SlowDown, a 429, a dropped connection) is
# tried again (obstore's retry policy, given to the store through Flyte's storage layer): after
# 0.5 s, then after a random wait between 0.5 s and twice the last one (jitter: ranks refused
# together come back apart), at most 4 s a wait, 4 times or until 15 s have passed (2 to 7.5 s of
# waits in all). obstore reads no `Retry-After` (S3 and GCS send none with these answers). Past
# that the write fails, and the copy is made again later with what was written meanwhile (see
# `_persist`).
WRITE_RETRY: dict[str, Any] = {
    "max_retries": 4,
    "backoff": {"init_backoff": timedelta(seconds=0.5), "max_backoff": timedelta(seconds=4), "base": 2},
    "retry_timeout": timedelta(seconds=15),
}


# The name the storage client (obstore, under Flyte's storage layer) gives its runtime's threads,
# which send and receive for every thread of the process.
CLIENT_THREAD = "tokio-rt-worker"


# The longest the process's exit waits for the client's threads to leave Python.
EXIT_WAIT_S = 5.0


def _filesystem(path: str, **kwargs: Any) -> Any:
    """Flyte's filesystem for `path`, its client's threads at most at the calling thread's priority
    and out of Python before the interpreter shuts down."""
    _client_threads_at_my_priority()
    _wait_for_the_client_at_exit()
    return storage.get_underlying_filesystem(path=path, **kwargs)


@functools.cache
def _wait_for_the_client_at_exit() -> None:
    atexit.register(_client_threads_out_of_python)


def _client_threads_out_of_python(timeout_s: float = EXIT_WAIT_S) -> bool:
    """Wait (at most `timeout_s`) until no thread that Python did not start runs Python code.

    The client's threads hand each answer to the calling event loop by running Python
    (`loop.call_soon_threadsafe`), and retake the interpreter's lock after writing to the loop's
    wake-up socket: by then the call they answered may have returned. Should the interpreter
    shut down meanwhile, the thread is ended in a way the client's runtime does not survive, and
    the whole process aborts (SIGABRT), its work done; the window is widest under load, with the
    client's threads at a lowered priority. Registered to run at exit, before the interpreter
    shuts down.

    Returns:
        Whether every such thread left Python in time.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        ours = {t.ident for t in threading.enumerate()}
        if all(ident in ours for ident in sys._current_frames()):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)  # lets them take the lock and finish


def _client_threads_at_my_priority() -> None:
    """Lower the storage client's threads to the calling thread's priority where it is lower than
    the main thread's (Linux; else nothing).

    A background thread that lowered its own priority (the copies, the report's refresh: see
    `_rank_run.lower_this_threads_priority`) would otherwise have its requests sent, received and
    decoded at normal priority by the client's threads, which then take CPU from training (on one
    CPU shared with a CPU-bound step, they slowed it by 10 to 15 % during a refresh of 2,048
    writers). A priority is never raised again, so the client then stays at the lower one.
    """
    try:
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        if mine <= os.getpriority(os.PRIO_PROCESS, os.getpid()):  # not lowered: nothing to do
            return
    except (AttributeError, OSError):  # not Linux
        return
    for thread in threads_named(CLIENT_THREAD):
        try:
            if os.getpriority(os.PRIO_PROCESS, thread) < mine:
                os.setpriority(os.PRIO_PROCESS, thread, mine)
        except OSError:  # gone meanwhile, or not allowed
            continue


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

    @property
    def cancelled(self) -> bool:
        """Whether `cancel()` was called."""
        return self._cancelled

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


def is_local(uri: str) -> bool:
    """Whether `uri` is a local path (or `file://` URI) rather than remote storage."""
    return _local(uri) is not None


def make_local_dir(uri: str) -> None:
    """Create the directory `uri` if it is local (remote storage has no directories to create)."""
    local = _local(uri)
    if local is not None:
        local.mkdir(parents=True, exist_ok=True)


def join(*parts: str) -> str:
    """`parts` joined with `/`, without doubled separators."""
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts) if p)


def put_bytes(uri: str, data: bytes, calls: Calls | None = None) -> None:
    """Write `data` as the object (or file) `uri`, replacing it (as one of `calls`, if given),
    retried as `WRITE_RETRY` says."""
    local = _local(uri)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        (calls.run if calls is not None else asyncio.run)(storage.put_stream(data, to_path=uri))
        return
    fs: Any = _filesystem(uri, retry_config=WRITE_RETRY)
    store, paths = _object_store(fs, [uri])

    async def put() -> None:
        if store is None:  # a store obstore does not serve: Flyte's own upload
            await storage.put_stream(data, to_path=uri)
        else:
            await store.put_async(paths[0], data)

    (calls.run if calls is not None else asyncio.run)(put())


def read_bytes(uri: str) -> bytes | None:
    """The content of the object `uri`, or `None` when there is none (one GET)."""
    return read_many([uri])[uri]


def read_many(uris: list[str], parallel: int = PARALLEL, share: float = 1.0) -> dict[str, bytes | None]:
    """The content of each object in `uris` (`None` where there is none), `parallel` at a time.

    With `share` below 1, the reads pause so that handling their answers takes at most that share
    of the time (see `Pace`): the process's other threads then wait little for the GIL."""
    remote = [u for u in uris if _local(u) is None]
    out: dict[str, bytes | None] = {}
    for uri in uris:
        local = _local(uri)
        if local is not None:
            try:
                out[uri] = local.read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                out[uri] = None
    if not remote:
        return out
    fs: Any = _filesystem(remote[0])
    store, paths = _object_store(fs, remote)  # one client for every read

    pace = Pace(share)

    async def one(uri: str, path: str | None, gate: asyncio.Semaphore) -> None:
        async with gate:
            await pace.pause()
            try:
                if store is None:
                    out[uri] = await fs._cat_file(uri)
                else:
                    found = await store.get_async(path)
                    out[uri] = (await found.bytes_async()).to_bytes()
            except Exception as exc:  # only a missing object is an answer; anything else raises
                if not _missing(exc):
                    raise
                out[uri] = None

    async def every() -> None:
        gate = asyncio.Semaphore(parallel)
        await asyncio.gather(*(one(u, paths[i] if paths else None, gate) for i, u in enumerate(remote)))

    asyncio.run(every())
    return out


class Pace:
    """Pauses a thread's work so that it takes at most `share` of the time, in bursts of at most
    `BURST_S` of its CPU time: a sleeping thread holds no GIL, so a training thread that shares the
    process waits at most about one burst for it."""

    def __init__(self, share: float) -> None:
        self.share = share
        self._cpu = time.thread_time()  # this thread's CPU time when the burst under way began
        self._resume = 0.0

    def delay(self) -> float:
        """Seconds to sleep now (0 while the burst under way is short enough)."""
        if self.share >= 1.0:
            return 0.0
        now = time.perf_counter()
        if now < self._resume:  # another task of this loop already began the pause
            return self._resume - now
        busy = time.thread_time() - self._cpu
        if busy < BURST_S:
            return 0.0
        self._resume = now + busy * (1.0 / self.share - 1.0)
        self._cpu = time.thread_time()
        return self._resume - now

    def sleep(self) -> None:
        """Sleep, from a thread, as long as `delay` says."""
        wait = self.delay()
        if wait:
            time.sleep(wait)

    async def pause(self) -> None:
        """Sleep, in an event loop, as long as `delay` says (every task of the loop waits)."""
        wait = self.delay()
        if wait:
            await asyncio.sleep(wait)


def delete(uris: list[str], calls: Calls | None = None) -> None:
    """Delete the objects (or files) `uris`; those already gone are passed over. Remote objects of
    one bucket go in batched requests where the store offers them (S3's DeleteObjects: 1,000 a
    request), retried as `WRITE_RETRY` says."""
    remote = [u for u in uris if _local(u) is None]
    for uri in uris:
        local = _local(uri)
        if local is not None:
            local.unlink(missing_ok=True)
    if not remote:
        return
    fs: Any = _filesystem(remote[0], retry_config=WRITE_RETRY)
    store, paths = _object_store(fs, remote)

    async def rm() -> None:
        if store is not None:
            await store.delete_async(paths)
        else:
            await fs._rm([u.split("://", 1)[1] for u in remote])

    (calls.run if calls is not None else asyncio.run)(rm())


def download(uri: str, relative: list[str], to: Path) -> None:
    """Write the objects `uri/<r>` for each `r` in `relative` as `to/<r>`, `PARALLEL` at a time."""
    contents = read_many([join(uri, r) for r in relative])
    for r in relative:
        data = contents[join(uri, r)]
        if data is not None:
            target = to / r
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


@dataclass(frozen=True)
class Listed:
    """One object as a listing shows it: its size, and a tag that changes whenever it is rewritten."""

    size: int
    tag: str


def list_flat(uri: str) -> dict[str, Listed]:
    """Every object (or file) under `uri`, by its path relative to `uri`.

    One flat listing of the prefix: a request per 1,000 objects however deep they lie (a walk
    would list each folder apart).
    """
    local = _local(uri)
    if local is not None:
        if not local.is_dir():
            return {}
        out = {}
        for p in local.rglob("*"):
            if p.is_file():
                stat = p.stat()
                out[p.relative_to(local).as_posix()] = Listed(stat.st_size, f"{stat.st_size}-{stat.st_mtime_ns}")
        return out
    fs: Any = _filesystem(uri)
    root = uri.rstrip("/")
    store, [prefix] = _object_store(fs, [root])
    if store is None:  # a store obstore does not serve: fsspec's own walk
        found = fs.find(root.split("://", 1)[1], detail=True)
        plain = root.split("://", 1)[1]
        return {
            path[len(plain) + 1 :]: Listed(int(info.get("size") or 0), str(info.get("ETag") or info.get("mtime")))
            for path, info in found.items()
            if path != plain
        }
    import obstore

    async def every() -> dict[str, Listed]:
        out: dict[str, Listed] = {}
        async for batch in obstore.list(store, prefix=prefix + "/"):
            for meta in batch:
                tag = str(meta.get("e_tag") or meta.get("last_modified"))
                out[meta["path"][len(prefix) + 1 :]] = Listed(int(meta["size"]), tag)
        return out

    return asyncio.run(every())


def list_folders(uri: str) -> list[str]:
    """The names of the folders directly under `uri`, sorted.

    One listing with a delimiter: a request per 1,000 entries (folders, and objects beside them),
    however much the folders hold.
    """
    local = _local(uri)
    if local is not None:
        return sorted(p.name for p in local.iterdir() if p.is_dir()) if local.is_dir() else []
    fs: Any = _filesystem(uri)
    root = uri.rstrip("/")
    store, [prefix] = _object_store(fs, [root])
    if store is None:  # a store obstore does not serve: fsspec's own listing
        found = fs.ls(root.split("://", 1)[1], detail=True)
        return sorted(str(info["name"]).rstrip("/").rsplit("/", 1)[-1] for info in found if info["type"] == "directory")
    import obstore

    async def folders() -> list[str]:
        found = await obstore.list_with_delimiter_async(store, prefix=prefix + "/")
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found["common_prefixes"])

    return asyncio.run(folders())


def _missing(exc: BaseException) -> bool:
    """Whether `exc` says the object does not exist (fsspec's or obstore's way)."""
    return isinstance(exc, FileNotFoundError) or type(exc).__name__ == "NotFoundError"


def _object_store(fs: Any, uris: list[str]) -> tuple[Any, list[str]]:
    """The obstore store behind `fs` for the bucket of `uris`, and their paths in it; `(None, [])`
    when `fs` is not obstore's (then fsspec's own calls are used)."""
    if not hasattr(fs, "_construct_store") or not hasattr(fs, "_split_path"):
        return None, []
    split = [fs._split_path(u) for u in uris]
    return fs._construct_store(split[0][0]), [path for _, path in split]
