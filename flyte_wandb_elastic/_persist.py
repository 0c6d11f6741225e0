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

Every `COMPACT_PARTS` parts of a file are joined into one segment (`<start>-<end>`, sent from the
pod's own file: no download), which the manifest names in their place; the parts are deleted one
compaction later, when no reader can still hold a manifest that names them. So a copy holds at
most `COMPACT_PARTS` parts of a file beside its segments, and each byte is sent at most twice.
Every other file is sent whole, when its size or modification time changed. W&B's own debug logs
(`logs/debug*.log`), which hold no row, are sent only by the last copy (at the rank's end, whether
it finished or failed). After each copy that sent something, the copy's manifest (see
`_manifest`) is rewritten; readers read it first and then what it names. A copy that fails is
tried again later (warned about once): training never waits for it.

A bucket under load refuses requests (S3's 503 SlowDown, GCS's 429). Each write is retried by the
store a few times, backing off (`_storage.WRITE_RETRY`); a copy whose write still fails stops
there, and the next copy waits twice as long as the last, up to `BACKOFF_INTERVALS` intervals
(less a random part of it, so that ranks refused together come back apart), then sends everything
written meanwhile: what a file holds is only ever counted as sent once the store has taken it,
and the manifest is written only after the objects it names. The last copy is tried again until
its share of the end runs out; what it could not send is said in a warning (and stays on the
pod's disk).

`fetch_copies` reads the copies back whole (by their manifests, or for copies without one, by
joining the parts).

Process: a rank's own process, in a thread of its own; `fetch_copies` wherever the copies are read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import _storage
from ._deadline import run_within
from ._manifest import MANIFESTS, Manifest, Piece, manifest_uri, read_manifest
from ._rank_run import lower_this_threads_priority

logger = logging.getLogger("flyte_wandb_elastic")

PARTS_SUFFIX = ".parts"
# The record, beside a run directory's copy, that its rows are on a W&B server.
SYNCED_MARKER = "flyte-wandb-synced.json"
# The name of a copied run directory: W&B's (`[offline-]run-<time>-<id>`) or the queued calls' (see `_queued`)
_COPY_NAME = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-|^flyte-queued-")
DEFAULT_PERSIST_INTERVAL_S = 30.0
# Write requests (PUTs, and deletes) a whole job may send to its storage per second by default: well
# under a fresh bucket's rate (S3: 3,500 writes/s per prefix; GCS: about 1,000 writes/s per bucket).
PUT_BUDGET_PER_S = 500.0
# Parts of a file joined into one segment (see the module docstring).
COMPACT_PARTS = 16
# Write requests one copy of a busy rank sends: a part of its `.wandb` log and of `files/output.log`,
# its manifest, and every `COMPACT_PARTS` copies a segment of each and a delete.
PUTS_PER_COPY = 3.0 + 4.0 / COMPACT_PARTS
# A copy still going after this long (or after one interval, if longer) is warned about.
SLOW_COPY_S = 10.0
# After failed copies in a row, the wait before the next one doubles, up to this many intervals.
BACKOFF_INTERVALS = 4
# The last copy, failed, is tried again after this long (less a random part of it) while its share lasts.
LAST_COPY_RETRY_S = 1.0
# At a rank's end, the run's files count as written once they have not changed for this long
# (waiting at most SETTLE_S).
QUIET_S = 0.3
SETTLE_S = 3.0
# How long a copy given up on may take to end once its storage calls are cancelled.
CANCEL_WAIT_S = 1.0
_APPEND_ONLY = (".wandb", ".log")
_SKIPPED_DIRS = ("tmp",)  # W&B's scratch space: nothing in it is a record
_LAST_ONLY_DIRS = ("logs",)  # W&B's debug logs: no row, no user output; sent by the last copy only


def default_persist_interval(world_size: int) -> float:
    """Seconds between copies where `persist_interval` is not declared: 30 s, or longer for a job
    so large that its ranks would send more than `PUT_BUDGET_PER_S` write requests a second
    (53.2 s at 1,024 x 8)."""
    return max(DEFAULT_PERSIST_INTERVAL_S, world_size * PUTS_PER_COPY / PUT_BUDGET_PER_S)


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
        self.manifest = Manifest()
        self._sent_offsets: dict[Path, int] = {}
        self._sent_stamps: dict[Path, tuple[int, int]] = {}
        self._unsealed: dict[str, list[Piece]] = {}  # each file's parts not yet in a segment
        # parts in a segment, by the manifest version that first left them out: deleted once no
        # manifest of the last `COMPACT_PARTS` copies names them
        self._doomed: list[tuple[int, list[str]]] = []
        self._pieces_sent = 0  # pieces the manifest names that were sent: a changed count is a manifest to write
        self._stored = Manifest()  # the manifest as last stored: what readers find
        self.failures = 0  # copies failed since the last one made
        self._last_error = ""
        self._lock = threading.Lock()  # one copy at a time
        self._calls = _storage.Calls()  # cancelled when the last copy is given up
        self._stop = threading.Event()
        self._warned = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Copy every `interval_s` seconds from a thread of its own, at a lower CPU priority than training."""

        def loop() -> None:
            lower_this_threads_priority()
            while not self._stop.wait(self.next_wait_s()):
                self._copy_in_time(max(self.interval_s, SLOW_COPY_S))

        self._thread = threading.Thread(target=loop, name="flyte-wandb-elastic-copy", daemon=True)
        self._thread.start()

    def next_wait_s(self) -> float:
        """Seconds until the next copy: the interval, or after failed copies in a row twice as long
        for each, up to `BACKOFF_INTERVALS` intervals, less up to a quarter of it at random."""
        if not self.failures:
            return self.interval_s
        longer = self.interval_s * min(2.0**self.failures, BACKOFF_INTERVALS)
        return longer * random.uniform(0.75, 1.0)

    def copy(self, final: bool = False) -> bool:
        """Send what changed since the last copy (the debug logs too if `final`), then the manifest;
        whether everything was sent."""
        with self._lock:
            pieces = self._pieces_sent
            try:
                # the rows first: a copy cut short (the end's share ran out) keeps them
                for path in sorted(self._files(final), key=lambda path: (path.suffix != ".wandb", str(path))):
                    self._send(path)
                if self._pieces_sent != pieces or (final and not self.manifest.ended):
                    self._write_manifest(ended=final)
            except Exception as exc:  # storage down or refusing: later, with what is written meanwhile
                self.failures += 1
                if not isinstance(exc, _storage.Cancelled):  # given up at the end: said there
                    self._last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    self._warn_once(self._last_error)
                if self._pieces_sent != pieces:  # what was sent before the failure is readable all the same
                    with contextlib.suppress(Exception):
                        self._write_manifest(ended=False)
                return False
            self.failures = 0
            try:
                self._delete_doomed()
            except Exception as exc:  # parts left over cost storage, not rows: deleted with the next copy
                self._warn_once(f"{type(exc).__name__}: {exc}")
            self.copies += 1
            return True

    def _write_manifest(self, ended: bool) -> None:
        """Store the manifest of what was sent so far (its version counts only once stored)."""
        stored = Manifest(self.manifest.files, self.manifest.copies + 1, ended)
        data = stored.to_json()
        _storage.put_bytes(manifest_uri(self.uri), data, self._calls)
        self.manifest.copies, self.manifest.ended = stored.copies, ended
        self._stored = Manifest.from_json(data)
        self.bytes_sent += len(data)

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
                "could not copy the W&B run files of %s to %s (%s); trying again every %g s, less often while it fails",
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
        deadline = time.monotonic() + timeout_s

        def again(final: bool) -> bool:
            # storage refusing (a bucket under load) or down: again, while the share lasts
            while not self.copy(final=final):
                pause = LAST_COPY_RETRY_S * random.uniform(0.5, 1.0)
                if time.monotonic() + pause >= deadline or self._calls.cancelled:
                    return False
                time.sleep(pause)
            return True

        def copied() -> bool:
            # the rows first, with the manifest that makes them readable, then W&B's debug logs
            # (which hold none): a last copy cut short by its share keeps the rows
            if len(self._files(final=True)) > len(self._files(final=False)) and not again(final=False):
                return False
            return again(final=True)

        def last() -> None:
            # W&B's service may still be writing the end of the run (its last rows and exit record)
            # when `finish` returns: copy once it has been quiet a moment, and again if it wrote on.
            if settle:
                self._wait_until_quiet(min(SETTLE_S, timeout_s / 2))
            outcome.append(copied())
            if settle and outcome[0] and self._wait_until_quiet(min(SETTLE_S, timeout_s / 4)):
                outcome[0] = copied()
            if outcome[0] and synced:
                mark_synced(self.uri, "uploaded by the run itself", self._calls)

        try:
            finished = run_within(last, timeout_s, "flyte-wandb-elastic-last-copy")
        except Exception as exc:  # the record only: the copy itself is made
            logger.warning("could not record %s as synced (%s)", self.uri, exc)
            return True
        if finished and outcome[0]:
            return True
        self.cancel()
        if not self.quiet:
            why = f" ({self._last_error})" if self._last_error else ""
            logger.warning(
                "the last copy of %s to %s did not finish within %.0f s%s; %s",
                self.run_dir,
                self.uri,
                timeout_s,
                why,
                self.unsent(),
            )
        return False

    def unsent(self) -> str:
        """What of the run's files the copy in storage lacks, in words (for a warning)."""
        if not self._stored.files:
            return "no copy of it could be made: its rows are only on this pod's disk"
        short = []
        for path in self._files(final=False):
            relative = path.relative_to(self.run_dir).as_posix()
            if path.name.endswith(_APPEND_ONLY) and (size := path.stat().st_size) > self._stored.size(relative):
                short.append(f"{self._stored.size(relative):,} of the {size:,} bytes of {relative}")
        if not short:
            return "the copy in storage holds every row (W&B's debug logs excepted)"
        return (
            f"the copy in storage holds {', '.join(short)}; the rest is only on this pod's disk "
            "(`python -m flyte_wandb_elastic sync` sends what is stored)"
        )

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
            return {p: p.stat().st_size for p in self._files(final=True) if p.exists()}

        deadline = time.monotonic() + timeout_s
        first = last = sizes()
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < QUIET_S:
            time.sleep(0.05)
            now = sizes()
            if now != last:
                last, quiet_since = now, time.monotonic()
        return last != first

    def _files(self, final: bool) -> list[Path]:
        skipped = _SKIPPED_DIRS if final else _SKIPPED_DIRS + _LAST_ONLY_DIRS
        return [
            p for p in self.run_dir.rglob("*") if p.is_file() and p.relative_to(self.run_dir).parts[0] not in skipped
        ]

    def _send(self, path: Path) -> bool:
        """Send what changed of one file; whether anything was sent."""
        relative = path.relative_to(self.run_dir).as_posix()
        if path.name.endswith(_APPEND_ONLY):
            offset = self._sent_offsets.get(path, 0)
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            if not data:
                return False
            part = Piece(offset, offset + len(data), f"{relative}{PARTS_SUFFIX}/{offset:015d}")
            _storage.put_bytes(_storage.join(self.uri, part.key), data, self._calls)
            self._sent_offsets[path] = part.end
            self.manifest.files.setdefault(relative, []).append(part)
            self._pieces_sent += 1
            self._unsealed.setdefault(relative, []).append(part)
            if len(self._unsealed[relative]) >= COMPACT_PARTS:
                self._compact(path, relative)
        else:
            stat = path.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
            if self._sent_stamps.get(path) == stamp:
                return False
            data = path.read_bytes()
            _storage.put_bytes(_storage.join(self.uri, relative), data, self._calls)
            self._sent_stamps[path] = stamp
            self.manifest.files[relative] = [Piece(0, len(data), relative)]
            self._pieces_sent += 1
        self.bytes_sent += len(data)
        return True

    def _compact(self, path: Path, relative: str) -> None:
        """Join the file's unsealed parts into one segment, sent from the pod's own file (the same
        bytes: the file is only appended to). The manifest names the segment in their place from
        this copy on; they are deleted at the next compaction."""
        parts = self._unsealed[relative]
        start, end = parts[0].start, parts[-1].end
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        segment = Piece(start, end, f"{relative}{PARTS_SUFFIX}/{start:015d}-{end:015d}")
        _storage.put_bytes(_storage.join(self.uri, segment.key), data, self._calls)
        del self._unsealed[relative]  # only once the segment is stored: else joined by a later copy
        self.bytes_sent += len(data)
        keys = {p.key for p in parts}
        self.manifest.files[relative] = [p for p in self.manifest.files[relative] if p.key not in keys] + [segment]
        self._doomed.append((self.manifest.copies + 1, sorted(keys)))

    def _delete_doomed(self) -> None:
        """Delete the parts that no manifest of the last `COMPACT_PARTS` copies names (in one request)."""
        due = [entry for entry in self._doomed if entry[0] <= self.manifest.copies - COMPACT_PARTS]
        if due:
            _storage.delete([_storage.join(self.uri, key) for _, keys in due for key in keys], self._calls)
            self._doomed = [entry for entry in self._doomed if entry not in due]


def mark_synced(run_dir_uri: str, how: str, calls: _storage.Calls | None = None) -> None:
    """Record, beside a run directory's copy, that its rows are on a W&B server."""
    record = {"synced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "how": how}
    _storage.put_bytes(_storage.join(run_dir_uri, SYNCED_MARKER), json.dumps(record).encode(), calls)


def assemble(root: Path) -> None:
    """Put every `<file>.parts/` folder under `root` back together as `<file>`, in place (copies
    without a manifest).

    Parts (and segments, named `<start>-<end>`) are joined in offset order up to the first gap (a
    part whose upload never succeeded is retried under the same offset, so a gap means the copy
    stopped there). A `.wandb` log ends at its last whole record: a copy taken while W&B was
    writing one holds half of it, which W&B's own reader refuses.
    """
    for parts in sorted(root.rglob("*" + PARTS_SUFFIX)):
        if not parts.is_dir():
            continue
        target = parts.with_name(parts.name[: -len(PARTS_SUFFIX)])
        pieces: list[tuple[int, int, Path]] = []
        for part in parts.iterdir():
            first, _, last = part.name.partition("-")
            pieces.append((int(first), -int(last) if last else 0, part))
        with open(target, "wb") as out:
            for start, _, part in sorted(pieces):
                if start > out.tell():
                    break
                data = part.read_bytes()
                if start + len(data) <= out.tell():
                    continue  # held already (by a segment)
                out.seek(start)
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


def fetch_copies(uri: str, into: Path, keep: Callable[[str], bool] | None = None) -> Path:
    """A local tree of the run directories stored under `uri`, their files whole.

    `uri` is a storage URI (`s3://...`) or a local directory: the run base directory of a Flyte
    run, anything under it, or a plain `WANDB_DIR`. One flat listing finds the copies; each copy
    with a manifest is read by it (the fewest objects that hold each file, in parallel), which a
    copier writing meanwhile never leaves half done; a copy without one (an older version's) is
    read whole and its parts joined. A local tree without copies is read in place; anything else is
    written under `into` first, so the stored copies are never changed. With `keep`, only the
    stored objects whose path (under `uri`) it keeps are fetched.

    Raises:
        FileNotFoundError: Nothing is stored under `uri`.
    """
    local = Path(uri.removeprefix("file://")) if _storage.is_local(uri) else None
    if local is not None and not local.exists():
        raise FileNotFoundError(f"{uri}: no such directory")
    listed = _storage.list_flat(uri)
    if local is not None and not any(PARTS_SUFFIX + "/" in key for key in listed):
        return local  # a plain WANDB_DIR
    if keep is not None:
        listed = {key: entry for key, entry in listed.items() if keep(key)}
    if not listed:
        raise FileNotFoundError(f"{uri}: nothing is stored there")
    root = into / "copy"
    copies: dict[str, list[str]] = {}
    for key in listed:
        names = key.split("/")
        at = next((i for i, name in enumerate(names[:-1]) if _COPY_NAME.match(name)), None)
        if at is not None and MANIFESTS not in names[:at]:
            copies.setdefault("/".join(names[: at + 1]), []).append("/".join(names[at + 1 :]))
    manifests = _storage.read_many([manifest_uri(_storage.join(uri, copy)) for copy in copies])
    legacy: list[str] = []
    by_manifest: dict[str, Manifest] = {}
    for copy, keys in copies.items():
        found = manifests[manifest_uri(_storage.join(uri, copy))]
        if found is None:
            legacy += [f"{copy}/{key}" for key in keys]
        else:
            by_manifest[copy] = Manifest.from_json(found)
            legacy += [f"{copy}/{key}" for key in keys if key == SYNCED_MARKER]
    _storage.download(uri, legacy, root)
    _write_by_manifests(uri, by_manifest, root)
    assemble(root)
    return root


def _write_by_manifests(uri: str, manifests: dict[str, Manifest], root: Path) -> None:
    """Write each copy's files under `root/<copy>` from the pieces its manifest names (a piece gone
    meanwhile, compacted by a copier far ahead of this reader: its manifest is read again, once)."""
    plans = {copy: {name: m.pieces_from(name, 0) for name in m.files} for copy, m in manifests.items()}
    uris = [_storage.join(uri, copy, p.key) for copy, plan in plans.items() for ps in plan.values() for p in ps]
    contents = _storage.read_many(uris)
    for copy, plan in plans.items():
        if any(contents[_storage.join(uri, copy, p.key)] is None for ps in plan.values() for p in ps):
            again = read_manifest(_storage.join(uri, copy))
            if again is not None:
                plan = {name: again.pieces_from(name, 0) for name in again.files}
                keys = [_storage.join(uri, copy, p.key) for ps in plan.values() for p in ps]
                contents.update(_storage.read_many(keys))
        for name, pieces in plan.items():
            target = root / copy / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                for piece in pieces:
                    data = contents[_storage.join(uri, copy, piece.key)]
                    if data is None:
                        break  # stop at the gap
                    out.write(data[out.tell() - piece.start :])
            if target.suffix == ".wandb":
                with open(target, "r+b") as out:
                    out.truncate(whole_records_end(target))


def run_dirs(root: Path) -> list[Path]:
    """Every W&B run directory (one holding a `run-*.wandb` file) under `root`, sorted."""
    return sorted({p.parent for p in root.rglob("run-*.wandb") if p.is_file()})
