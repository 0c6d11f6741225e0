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
pod's own file: no download), which the manifest names in their place, beside the newest part
until the next copy (a reader that has read up to that part reads only it, not the segment); the
parts are deleted `COMPACT_PARTS` copies after the manifest stopped naming them, when no reader
can still hold a manifest that does. So a copy holds at most about `2 * COMPACT_PARTS` parts of
a file beside its segments, and each byte is sent at most twice.
Every `COMPACT_PARTS` segments, an index naming all the file's segments so far is written once
(`index-<end>.json`), and the manifest names it in place of the segments (the index it replaces
is deleted as parts are): the manifest stays the same size however long the job runs.
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

`find_copies` finds the copies under a URI by listings that do not grow with the job's length
(the manifests folders, not the copies), and `fetch_copies` reads them back whole (by their
manifests, or for copies without one, by joining the parts).

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
from dataclasses import dataclass, replace
from pathlib import Path

from . import _storage
from ._deadline import run_within
from ._manifest import MANIFESTS, Manifest, Piece, index_json, index_pieces, manifest_uri, read_manifest
from ._rank_run import lower_this_threads_priority

logger = logging.getLogger("flyte_wandb_elastic")

PARTS_SUFFIX = ".parts"
# The record, beside a run directory's copy, that its rows are on a W&B server.
SYNCED_MARKER = "flyte-wandb-synced.json"
# The record, in the manifests folder beside a copy's manifest, that the copy is synced: a listing
# of the manifests shows it (`<run dir>.synced`).
SYNCED_SUFFIX = ".synced"
# The name of a copied run directory: W&B's (`[offline-]run-<time>-<id>`) or the queued calls' (see `_queued`)
_COPY_NAME = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-|^flyte-queued-")
# The folder of one writer's copies (see `_planner.run_files_prefix`)
_WRITER = re.compile(r"^rank-\d+$")
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
        compact_parts: How many parts make a segment, and segments an index (`COMPACT_PARTS`; the
            tests drive whole index cycles with fewer).
    """

    def __init__(
        self,
        run_dir: str | Path,
        prefix: str,
        interval_s: float,
        quiet: bool = False,
        compact_parts: int = COMPACT_PARTS,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        self.compact_parts = compact_parts
        self.uri = _storage.join(prefix, self.run_dir.name)
        self.interval_s = interval_s
        self.bytes_sent = 0
        self.copies = 0
        self.manifest = Manifest()
        self._sent_offsets: dict[Path, int] = {}
        self._sent_stamps: dict[Path, tuple[int, int]] = {}
        self._unsealed: dict[str, list[Piece]] = {}  # each file's parts not yet in a segment
        # each file's newest part, named beside its new segment until the next copy, and the keys
        # left out of the manifest that are deleted with it (its segment's other parts, an index)
        self._lingering: dict[str, tuple[Piece, list[str]]] = {}
        self._sealed: dict[str, list[Piece]] = {}  # each file's segments
        self._indexed: dict[str, int] = {}  # how many of them the manifest's index names
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
            self._leave_out_lingering()
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
        stored = Manifest(self.manifest.files, self.manifest.indexes, self.manifest.copies + 1, ended)
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
                mark_synced(self.uri, "uploaded by the run itself", self._calls, manifest=True)

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
        if not self._stored.files and not self._stored.indexes:
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
            if len(self._unsealed[relative]) >= self.compact_parts:
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
        this copy on, and the newest part beside it until the next copy (a reader that has read up
        to that part reads it, not the segment); the parts are deleted `COMPACT_PARTS`
        copies later (see `_delete_doomed`). Every `COMPACT_PARTS` segments, an index of them."""
        parts = self._unsealed[relative]
        start, end = parts[0].start, parts[-1].end
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        segment = Piece(start, end, f"{relative}{PARTS_SUFFIX}/{start:015d}-{end:015d}")
        _storage.put_bytes(_storage.join(self.uri, segment.key), data, self._calls)
        del self._unsealed[relative]  # only once the segment is stored: else joined by a later copy
        self.bytes_sent += len(data)
        keys = {p.key for p in parts[:-1]}
        self._lingering[relative] = (parts[-1], sorted(keys))
        self.manifest.files[relative] = [p for p in self.manifest.files[relative] if p.key not in keys] + [segment]
        self._sealed.setdefault(relative, []).append(segment)
        if len(self._sealed[relative]) - self._indexed.get(relative, 0) >= self.compact_parts:
            self._index(relative)

    def _index(self, relative: str) -> None:
        """Write an index of the file's segments so far (a new object, never rewritten), which the
        manifest names in their place from this copy on; the index it replaces is deleted
        `COMPACT_PARTS` copies later. The manifest then names at most `COMPACT_PARTS` segments and
        about as many parts of each file, however long the job."""
        segments = self._sealed[relative]
        end = segments[-1].end
        index = Piece(segments[0].start, end, f"{relative}{PARTS_SUFFIX}/index-{end:015d}.json")
        data = index_json(segments)
        _storage.put_bytes(_storage.join(self.uri, index.key), data, self._calls)
        self._indexed[relative] = len(segments)  # only once the index is stored: else written by a later copy
        self.bytes_sent += len(data)
        keys = {s.key for s in segments}
        self.manifest.files[relative] = [p for p in self.manifest.files[relative] if p.key not in keys]
        replaced = self.manifest.indexes.get(relative)
        self.manifest.indexes[relative] = index
        if replaced is not None:  # deleted with the segment's parts
            self._lingering[relative][1].append(replaced.key)

    def _leave_out_lingering(self) -> None:
        """Stop naming each file's newest part beside its segment (a copy later): from the next
        manifest on, it is deleted with the segment's other parts (see `_delete_doomed`)."""
        for relative, (part, keys) in self._lingering.items():
            self.manifest.files[relative].remove(part)
            self._doomed.append((self.manifest.copies + 1, [*keys, part.key]))
        self._lingering.clear()

    def _delete_doomed(self) -> None:
        """Delete the parts that no manifest of the last `COMPACT_PARTS` copies names (in one request)."""
        due = [entry for entry in self._doomed if entry[0] <= self.manifest.copies - self.compact_parts]
        if due:
            _storage.delete([_storage.join(self.uri, key) for _, keys in due for key in keys], self._calls)
            self._doomed = [entry for entry in self._doomed if entry not in due]


def mark_synced(run_dir_uri: str, how: str, calls: _storage.Calls | None = None, manifest: bool = False) -> None:
    """Record, beside a run directory's copy, that its rows are on a W&B server; for a copy with a
    manifest, in the manifests folder too, where the listing that finds the copy shows it."""
    record = json.dumps({"synced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "how": how}).encode()
    _storage.put_bytes(_storage.join(run_dir_uri, SYNCED_MARKER), record, calls)
    if manifest:
        _storage.put_bytes(manifest_uri(run_dir_uri).removesuffix(".json") + SYNCED_SUFFIX, record, calls)


def assemble(root: Path) -> None:
    """Put every `<file>.parts/` folder under `root` back together as `<file>`, in place (copies
    without a manifest).

    Parts (and segments, named `<start>-<end>`) are joined in offset order up to the first gap (a
    part whose upload never succeeded is retried under the same offset, so a gap means the copy
    stopped there); indexes are passed over. A `.wandb` log ends at its last whole record: a copy
    taken while W&B was writing one holds half of it, which W&B's own reader refuses.
    """
    for parts in sorted(root.rglob("*" + PARTS_SUFFIX)):
        if not parts.is_dir():
            continue
        target = parts.with_name(parts.name[: -len(PARTS_SUFFIX)])
        pieces: list[tuple[int, int, Path]] = []
        for part in parts.iterdir():
            first, _, last = part.name.partition("-")
            if first.isdigit() and (not last or last.isdigit()):
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


def is_copy_name(name: str) -> bool:
    """Whether a folder named `name` is a copy: of a run directory (W&B's
    `[offline-]run-<time>-<id>`) or of a file of queued calls (see `_queued`)."""
    return _COPY_NAME.match(name) is not None


@dataclass(frozen=True)
class StoredCopy:
    """One copy (of a run directory, or of a file of queued calls) found in storage.

    Attributes:
        path: Where it lies, relative to the URI searched (`.../rank-<r>/<run dir>`).
        listed: For a copy without a manifest (an earlier version's): its objects, relative to
            it, as listed; `None` for a copy read by its manifest.
        synced: Whether the listings show it recorded as synced (see `read_synced` for the
            records a listing of the manifests does not show).
    """

    path: str
    listed: tuple[str, ...] | None = None
    synced: bool = False


def find_copies(uri: str) -> list[StoredCopy]:
    """The copies stored under `uri`, found by listings that do not grow with the job's length.

    `uri` is anything from a Flyte run's base directory (or `persist_to`) down to one writer's
    folder (`rank-<r>`), local or remote. The folders above the copies are listed one level at a
    time (a request per 1,000 entries); in a folder holding writers' folders (an action's), only
    its `manifests` folder is listed whole (a request per 1,000 copies), never the copies, whose
    parts and segments grow with the job. Only where no manifest lies is a copy listed whole: a
    writer's folder that the manifests do not name at all (an earlier version's copies, or a
    writer lost before its first manifest), or an action's folder with no `manifests` folder.

    Raises:
        FileNotFoundError: `uri` is a local path that does not exist.
    """
    if _storage.is_local(uri) and not Path(uri.removeprefix("file://")).exists():
        raise FileNotFoundError(f"{uri}: no such directory")
    found: list[StoredCopy] = []
    folders = [""]
    while folders:
        folder = folders.pop(0)
        names = _storage.list_folders(_storage.join(uri, folder))
        if MANIFESTS in names or any(_WRITER.match(name) for name in names):
            found += _in_action(uri, folder, names)
        elif any(is_copy_name(name) for name in names):
            found += _in_writer(uri, folder, [name for name in names if is_copy_name(name)])
        else:
            folders += [_storage.join(folder, name) for name in names]
    return sorted(found, key=lambda copy: copy.path)


def _in_action(uri: str, folder: str, names: list[str]) -> list[StoredCopy]:
    """The copies in an action's folder (`<folder>/<writer>/<run dir>`, `<folder>/manifests/...`)."""
    here = _storage.join(uri, folder)
    if MANIFESTS not in names:  # an earlier version's: no manifest at all
        return _listed_copies(folder, _storage.list_flat(here))
    copies, synced = _by_manifests(_storage.list_flat(_storage.join(here, MANIFESTS)))
    found = [StoredCopy(_storage.join(folder, c), synced=c in synced) for c in copies]
    named = {c.partition("/")[0] for c in copies}
    for writer in names:
        if writer != MANIFESTS and writer not in named:
            found += _listed_copies(_storage.join(folder, writer), _storage.list_flat(_storage.join(here, writer)))
    return found


def _in_writer(uri: str, folder: str, names: list[str]) -> list[StoredCopy]:
    """The copies `names` in one writer's folder (its manifests lie in `../manifests/<writer>/`)."""
    writer_uri = _storage.join(uri, folder)
    root, _, writer = writer_uri.rstrip("/").rpartition("/")
    copies, synced = _by_manifests(_storage.list_flat(_storage.join(root, MANIFESTS, writer)), depth=1)
    found = []
    for name in names:
        if name in copies:
            found.append(StoredCopy(_storage.join(folder, name), synced=name in synced))
        elif listed := _storage.list_flat(_storage.join(writer_uri, name)):
            found.append(StoredCopy(_storage.join(folder, name), tuple(sorted(listed)), SYNCED_MARKER in listed))
    return found


def _by_manifests(listed: dict[str, _storage.Listed], depth: int = 2) -> tuple[set[str], set[str]]:
    """The copies a listing of a manifests folder names (`<writer>/<run dir>`, or at `depth` 1,
    one writer's `<run dir>`), and those of them recorded as synced."""
    copies, synced = set(), set()
    for key in listed:
        if key.count("/") != depth - 1:
            continue
        if key.endswith(".json"):
            copies.add(key.removesuffix(".json"))
        elif key.endswith(SYNCED_SUFFIX):
            synced.add(key.removesuffix(SYNCED_SUFFIX))
    return copies, synced & copies


def _listed_copies(folder: str, listed: dict[str, _storage.Listed]) -> list[StoredCopy]:
    """The copies without a manifest that a flat listing of `folder` shows, with their objects."""
    objects: dict[str, list[str]] = {}
    for key in listed:
        names = key.split("/")
        at = next((i for i, name in enumerate(names[:-1]) if is_copy_name(name)), None)
        if at is not None and MANIFESTS not in names[:at]:
            objects.setdefault("/".join(names[: at + 1]), []).append("/".join(names[at + 1 :]))
    return [
        StoredCopy(_storage.join(folder, copy), tuple(keys), SYNCED_MARKER in keys) for copy, keys in objects.items()
    ]


def read_synced(uri: str, copies: list[StoredCopy]) -> list[StoredCopy]:
    """`copies`, each with a manifest and not shown as synced by the listings read for its record
    beside it (one request a copy, in parallel): a copy synced before the manifests folder held
    the records."""
    unknown = [c for c in copies if c.listed is None and not c.synced]
    found = _storage.read_many([_storage.join(uri, c.path, SYNCED_MARKER) for c in unknown])
    return [
        replace(c, synced=True) if c in unknown and found[_storage.join(uri, c.path, SYNCED_MARKER)] else c
        for c in copies
    ]


def fetch_copies(uri: str, into: Path, copies: list[StoredCopy] | None = None) -> Path:
    """A local tree of the run directories stored under `uri`, their files whole.

    `uri` is a storage URI (`s3://...`) or a local directory: the run base directory of a Flyte
    run, anything under it, or a plain `WANDB_DIR`. The copies are found by `find_copies` (or are
    `copies`, found so). Each copy with a manifest is read by it (the fewest objects that hold each
    file, in parallel: its manifest, then its indexes, then its pieces, a round each), which a
    copier writing meanwhile never leaves half done; a copy without one (an earlier version's) is
    read whole and its parts joined. A local tree without copies is read in place; anything else
    is written under `into` first, so the stored copies are never changed. A copy's synced
    record comes with it where `copies` says it is synced.

    Raises:
        FileNotFoundError: Nothing is stored under `uri`.
    """
    local = Path(uri.removeprefix("file://")) if _storage.is_local(uri) else None
    if local is not None and not local.exists():
        raise FileNotFoundError(f"{uri}: no such directory")
    if local is not None and not any(p.is_dir() for p in local.rglob("*" + PARTS_SUFFIX)):
        return local  # a plain WANDB_DIR
    if copies is None:
        copies = find_copies(uri)
    if not copies:
        raise FileNotFoundError(f"{uri}: nothing is stored there")
    root = into / "copy"
    by_manifest = [c.path for c in copies if c.listed is None]
    found = _storage.read_many([manifest_uri(_storage.join(uri, path)) for path in by_manifest])
    manifests = {path: found[manifest_uri(_storage.join(uri, path))] for path in by_manifest}
    gone = [path for path, data in manifests.items() if data is None]  # deleted since it was listed
    listed = {path: list(_storage.list_flat(_storage.join(uri, path))) for path in gone}
    objects = [f"{c.path}/{key}" for c in copies if c.listed is not None for key in c.listed]
    objects += [f"{path}/{key}" for path, keys in listed.items() for key in keys]
    objects += [f"{c.path}/{SYNCED_MARKER}" for c in copies if c.listed is None and c.synced]
    _storage.download(uri, objects, root)
    _write_by_manifests(uri, {path: Manifest.from_json(data) for path, data in manifests.items() if data}, root)
    assemble(root)
    return root


def _plans(uri: str, manifests: dict[str, Manifest]) -> dict[str, dict[str, list[Piece]] | None]:
    """For each copy, the pieces to read of each file from byte 0, its indexes read first (all in
    one round); `None` for a copy whose index is gone (replaced meanwhile: read its manifest again)."""
    indexes = [_storage.join(uri, copy, p.key) for copy, m in manifests.items() for p in m.indexes.values()]
    found = _storage.read_many(indexes)
    plans: dict[str, dict[str, list[Piece]] | None] = {}
    for copy, m in manifests.items():
        indexed = {name: found[_storage.join(uri, copy, p.key)] for name, p in m.indexes.items()}
        if any(data is None for data in indexed.values()):
            plans[copy] = None
            continue
        plans[copy] = {name: m.pieces_from(name, 0, index_pieces(indexed.get(name) or b"[]")) for name in m.names()}
    return plans


def _write_by_manifests(uri: str, manifests: dict[str, Manifest], root: Path) -> None:
    """Write each copy's files under `root/<copy>` from the pieces its manifest names (an index or
    a piece gone meanwhile, deleted by a copier far ahead of this reader: its manifest is read
    again, once)."""
    plans = _plans(uri, manifests)
    uris = [_storage.join(uri, copy, p.key) for copy, plan in plans.items() for ps in (plan or {}).values() for p in ps]
    contents = _storage.read_many(uris)
    for copy, plan in plans.items():
        if plan is None or any(contents[_storage.join(uri, copy, p.key)] is None for ps in plan.values() for p in ps):
            again = read_manifest(_storage.join(uri, copy))
            if again is not None:
                plan = _plans(uri, {copy: again})[copy]
                if plan is not None:
                    keys = [_storage.join(uri, copy, p.key) for ps in plan.values() for p in ps]
                    contents.update(_storage.read_many(keys))
        for name, pieces in (plan or {}).items():
            target = root / copy / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                for piece in pieces:
                    data = contents.get(_storage.join(uri, copy, piece.key))
                    if data is None:
                        break  # stop at the gap
                    out.write(data[out.tell() - piece.start :])
            if target.suffix == ".wandb":
                with open(target, "r+b") as out:
                    out.truncate(whole_records_end(target))


def run_dirs(root: Path) -> list[Path]:
    """Every W&B run directory (one holding a `run-*.wandb` file) under `root`, sorted."""
    return sorted({p.parent for p in root.rglob("run-*.wandb") if p.is_file()})
