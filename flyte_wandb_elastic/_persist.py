"""Copies of each rank's W&B run directory in durable storage, and reading them back.

A pod's disk is deleted with the pod, and `WANDB_DIR` with it. Each rank that writes a run copies
its run directory (offline, offline fallback and online alike: the `.wandb` transaction log holds
every row) to `run_files_prefix(...)/<run directory name>/`, every `persist_interval` seconds and
once more at the end of the rank.

What one copy sends grows with what was written since the last one: files that W&B only appends to
(the `.wandb` log and the `.log` files) are sent as numbered parts, each holding the bytes from
its offset to the end of the file at the time of the copy:

    <prefix>/<run dir>/run-<id>.wandb.parts/000000000000000   first copy: bytes 0..n
    <prefix>/<run dir>/run-<id>.wandb.parts/000000000004096   next copy: bytes 4096..m

Every other file is sent whole, when its size or modification time changed. `assemble` puts the
parts back together. A copy that fails is tried again at the next interval (warned about once):
training never waits for it.

Process: a rank's own process, in a thread of its own; `assemble` wherever the copies are read.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

from . import _storage
from ._deadline import run_within
from ._rank_run import lower_this_threads_priority

logger = logging.getLogger("flyte_wandb_elastic")

PARTS_SUFFIX = ".parts"
# The record, beside a run directory's copy, that its rows are on a W&B server.
SYNCED_MARKER = "flyte-wandb-synced.json"
DEFAULT_PERSIST_INTERVAL_S = 30.0
# A copy still going after this long (or after one interval, if longer) is warned about.
SLOW_COPY_S = 10.0
# At a rank's end, the run's files count as written once they have not changed for this long
# (waiting at most SETTLE_S).
QUIET_S = 0.3
SETTLE_S = 3.0
# How long a copy given up on may take to end once its storage calls are cancelled.
CANCEL_WAIT_S = 1.0
_APPEND_ONLY = (".wandb", ".log")
_SKIPPED_DIRS = ("tmp",)  # W&B's scratch space: nothing in it is a record


class RunFilesCopier:
    """Copies one run directory to `prefix/<its name>/`, incrementally, in the background.

    Args:
        run_dir: The run's local directory (`run.settings.sync_dir`).
        prefix: The storage prefix of this writer (see `run_files_prefix`).
        interval_s: Seconds between copies.
        quiet: Whether failed copies are only logged at debug level, not warned about.
    """

    def __init__(self, run_dir: str | Path, prefix: str, interval_s: float, quiet: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        self.uri = _storage.join(prefix, self.run_dir.name)
        self.interval_s = interval_s
        self.bytes_sent = 0
        self.copies = 0
        self._sent_offsets: dict[Path, int] = {}
        self._sent_stamps: dict[Path, tuple[int, int]] = {}
        self._lock = threading.Lock()  # one copy at a time
        self._calls = _storage.Calls()  # cancelled when the last copy is given up
        self._stop = threading.Event()
        self._warned = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Copy every `interval_s` seconds from a thread of its own, at a lower CPU priority than training."""

        def loop() -> None:
            lower_this_threads_priority()
            while not self._stop.wait(self.interval_s):
                self._copy_in_time(max(self.interval_s, SLOW_COPY_S))

        self._thread = threading.Thread(target=loop, name="flyte-wandb-elastic-copy", daemon=True)
        self._thread.start()

    def copy(self) -> bool:
        """Send what changed since the last copy; whether everything was sent."""
        with self._lock:
            try:
                for path in sorted(self._files()):
                    self._send(path)
            except Exception as exc:  # storage down or refusing: next time
                self._warn_once(f"{type(exc).__name__}: {exc}")
                return False
            self.copies += 1
            return True

    def _copy_in_time(self, timeout_s: float) -> None:
        """Copy, warning once if it takes longer than `timeout_s` (storage clients retry for minutes)."""
        if self._lock.locked():  # the last copy is still being retried: wait for it
            return
        try:
            if not run_within(self.copy, timeout_s, "flyte-wandb-elastic-copying"):
                self._warn_once(f"no answer within {timeout_s:g} s")
        except Exception as exc:  # never in training's way
            logger.debug("copy of %s failed: %s", self.run_dir, exc)

    def _warn_once(self, why: str) -> None:
        if self.quiet:
            logger.debug("could not copy %s to %s (%s)", self.run_dir, self.uri, why)
        elif not self._warned:
            self._warned = True
            logger.warning(
                "could not copy the W&B run files of %s to %s (%s); retrying every %g s",
                self.run_dir,
                self.uri,
                why,
                self.interval_s,
            )

    def final_copy(self, timeout_s: float, synced: bool, settle: bool = True) -> bool:
        """Stop copying in the background, copy once more (with the synced record if `synced`).

        Waits at most `timeout_s` (storage may be down): whether the last copy was made. With
        `settle`, the copy waits until the files have stopped changing (W&B writing their end).
        """
        self._stop.set()
        outcome: list[bool] = []

        def last() -> None:
            # W&B's service may still be writing the end of the run (its last rows and exit record)
            # when `finish` returns: copy once it has been quiet a moment, and again if it wrote on.
            if settle:
                self._wait_until_quiet(min(SETTLE_S, timeout_s / 2))
            outcome.append(self.copy())
            if settle and self._wait_until_quiet(min(SETTLE_S, timeout_s / 4)):
                outcome[0] = self.copy()
            if outcome[0] and synced:
                mark_synced(self.uri, "uploaded by the run itself", self._calls)

        try:
            if run_within(last, timeout_s, "flyte-wandb-elastic-last-copy"):
                return outcome[0]
        except Exception as exc:  # the record only: the copy itself is made
            logger.warning("could not record %s as synced (%s)", self.uri, exc)
            return True
        self.cancel()
        if self.quiet:
            return False
        kept = (
            f"the copy made before it holds all but about the last {self.interval_s:g} s"
            if self.copies
            else "no copy of it could be made: its rows are only on this pod's disk"
        )
        logger.warning(
            "the last copy of %s to %s did not finish within %.0f s; %s", self.run_dir, self.uri, timeout_s, kept
        )
        return False

    def cancel(self) -> None:
        """Stop copying, cancelling a copy under way: no thread of this copier may be left inside the
        storage client when the process exits (waits at most `CANCEL_WAIT_S` for it to end)."""
        self._stop.set()
        self._calls.cancel()
        if self._lock.acquire(timeout=CANCEL_WAIT_S):
            self._lock.release()

    def _wait_until_quiet(self, timeout_s: float) -> bool:
        """Wait until no file of the run has changed for `QUIET_S` (at most `timeout_s`); whether any did."""

        def sizes() -> dict[Path, int]:
            return {p: p.stat().st_size for p in self._files() if p.exists()}

        deadline = time.monotonic() + timeout_s
        first = last = sizes()
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < QUIET_S:
            time.sleep(0.05)
            now = sizes()
            if now != last:
                last, quiet_since = now, time.monotonic()
        return last != first

    def _files(self) -> list[Path]:
        return [
            p
            for p in self.run_dir.rglob("*")
            if p.is_file() and p.relative_to(self.run_dir).parts[0] not in _SKIPPED_DIRS
        ]

    def _send(self, path: Path) -> None:
        relative = path.relative_to(self.run_dir).as_posix()
        if path.name.endswith(_APPEND_ONLY):
            offset = self._sent_offsets.get(path, 0)
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            if not data:
                return
            _storage.put_bytes(_storage.join(self.uri, relative + PARTS_SUFFIX, f"{offset:015d}"), data, self._calls)
            self._sent_offsets[path] = offset + len(data)
        else:
            stat = path.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
            if self._sent_stamps.get(path) == stamp:
                return
            data = path.read_bytes()
            _storage.put_bytes(_storage.join(self.uri, relative), data, self._calls)
            self._sent_stamps[path] = stamp
        self.bytes_sent += len(data)


def mark_synced(run_dir_uri: str, how: str, calls: _storage.Calls | None = None) -> None:
    """Record, beside a run directory's copy, that its rows are on a W&B server."""
    record = {"synced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "how": how}
    _storage.put_bytes(_storage.join(run_dir_uri, SYNCED_MARKER), json.dumps(record).encode(), calls)


def assemble(root: Path) -> None:
    """Put every `<file>.parts/` folder under `root` back together as `<file>`, in place.

    Parts are joined in offset order up to the first gap (a part whose upload never succeeded is
    retried under the same offset, so a gap means the copy stopped there). A `.wandb` log ends at
    its last whole record: a copy taken while W&B was writing one holds half of it, which W&B's
    own reader refuses.
    """
    for parts in sorted(root.rglob("*" + PARTS_SUFFIX)):
        if not parts.is_dir():
            continue
        target = parts.with_name(parts.name[: -len(PARTS_SUFFIX)])
        with open(target, "wb") as out:
            for part in sorted(parts.iterdir(), key=lambda p: int(p.name)):
                if int(part.name) > out.tell():
                    break
                data = part.read_bytes()
                out.seek(int(part.name))
                out.write(data)
                out.truncate()
            if target.suffix == ".wandb":  # a copy taken mid-write ends in half a record: drop it
                out.truncate(whole_records_end(target))
        shutil.rmtree(parts)


def whole_records_end(path: Path) -> int:
    """Where the last whole record of a `.wandb` log ends (its size, unless its tail is torn)."""
    from ._runfiles import _HEADER, _MAGIC, parse_records

    data = path.read_bytes()
    if data[:4] != _MAGIC:
        return len(data)
    end = _HEADER
    for _, end in parse_records(data, _HEADER):  # noqa: B007 (the last one is the answer)
        pass
    return end


def fetch_copies(uri: str, into: Path) -> Path:
    """A local tree of the run directories stored under `uri`, their parts put back together.

    `uri` is a storage URI (`s3://...`) or a local directory: the run base directory of a Flyte
    run, anything under it, or a plain `WANDB_DIR`. A local tree without parts is read in place;
    anything else is copied under `into` first, so the stored copies are never changed.

    Raises:
        FileNotFoundError: Nothing is stored under `uri`.
    """
    root = _storage.download_tree(uri, into / "copy")
    if root != into / "copy":  # local: read in place unless parts must be joined
        if not any(p.is_dir() for p in root.rglob("*" + PARTS_SUFFIX)):
            return root
        root = Path(shutil.copytree(root, into / "copy", dirs_exist_ok=True))
    assemble(root)
    return root


def run_dirs(root: Path) -> list[Path]:
    """Every W&B run directory (one holding a `run-*.wandb` file) under `root`, sorted."""
    return sorted({p.parent for p in root.rglob("run-*.wandb") if p.is_file()})
