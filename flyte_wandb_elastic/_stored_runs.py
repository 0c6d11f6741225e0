"""What the run files copied to storage say so far, read incrementally: the report tab's source.

Each rank's copies lie under `<action prefix>/rank-<r>/<run dir>/` (see `run_files_prefix`), the
`.wandb` transaction log as numbered parts and segments, and each copy's manifest under
`<action prefix>/manifests/rank-<r>/<run dir>.json` (see `_persist`, `_manifest`).
`StoredRuns.refresh()` lists the manifests folder (one request per 1,000 writers), reads only
the manifests whose tag changed, then only the pieces of their logs it has not read yet (all of
them in parallel; the newest, which the manifest names itself: an index of older segments is read
first only by a reader that starts further back, such as a restarted rank 0's), and parses only
the records they complete. Each rank's writer keeps its row
count, the last value of each metric and bounded, downsampled curves, so the requests, work and
memory of a refresh grow with what was logged since the last one, not with the run.

Process: rank 0's process, in the report's thread (see `_report`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from . import _storage
from ._manifest import MANIFESTS, Manifest, Piece, index_pieces
from ._runfiles import (
    _HEADER,
    _MAGIC,
    CONFIG,
    FILES,
    METRIC,
    OUTPUT,
    OUTPUT_RAW,
    STATS,
    SUMMARY,
    TELEMETRY,
    parse_records,
)
from ._values import nonfinite_name

# Finite points kept per curve: between MAX_POINTS and twice as many, evenly spread over the steps.
MAX_POINTS = 100
# Runs of non-finite values kept per curve (the first point of each): up to 2 * MAX_BREAKS, evenly
# spread over the runs once there are more.
MAX_BREAKS = 100
_MANIFEST = re.compile(r"^rank-(\d+)/([^/]+)\.json$")
# Records the tab does not read (it reads `run`, `history` and `exit`): not decoded at all.
_PASSED_OVER = frozenset({SUMMARY, OUTPUT, CONFIG, FILES, STATS, TELEMETRY, METRIC, OUTPUT_RAW})
_LOG = re.compile(r"^run-[^/]+\.wandb$")


class _Thinned:
    """Items kept as they come, every k-th: `k` doubles (and every other kept item goes) whenever
    more than `2 * cap` are kept, so any number of items costs at most that many."""

    def __init__(self, cap: int) -> None:
        self.items: list[tuple[int, int, float]] = []
        self._cap = cap
        self._stride = 1
        self._seen = 0

    def add(self, item: tuple[int, int, float]) -> None:
        if self._seen % self._stride == 0:
            self.items.append(item)
            if len(self.items) > 2 * self._cap:
                self.items = self.items[::2]
                self._stride *= 2
        self._seen += 1


class Curve:
    """One metric's `(step, value)` points, bounded: finite points thinned by keeping every k-th as
    they come, and the first point of each run of non-finite values (NaN, +inf, -inf) kept apart,
    so that thinning never hides a divergence. A chart breaks its line at each non-finite point.

    At most `2 * MAX_POINTS` finite points, `2 * MAX_BREAKS` non-finite ones and the newest point
    are kept, however long the curve. `last` is always the newest point.
    """

    def __init__(self) -> None:
        self.last: tuple[int, float] | None = None
        self._finite = _Thinned(MAX_POINTS)
        self._breaks = _Thinned(MAX_BREAKS)
        self._seq = 0  # arrival order: a restart's steps begin again at 0
        self._broken: str | None = None  # the kind of the non-finite run under way, if any

    def add(self, step: int, value: float) -> None:
        self.last = (step, value)
        kind = nonfinite_name(value)
        if kind is None:
            self._finite.add((self._seq, step, value))
        elif kind != self._broken:  # a new run of non-finite values (or NaN turned to inf)
            self._breaks.add((self._seq, step, value))
        self._broken = kind
        self._seq += 1

    def shown(self) -> list[tuple[int, float]]:
        """The kept points in the order they were logged, ending with the newest."""
        kept = sorted(self._finite.items + self._breaks.items)
        if self.last is not None and (not kept or kept[-1][0] != self._seq - 1):
            return [*((s, v) for _, s, v in kept), self.last]
        return [(s, v) for _, s, v in kept]


@dataclass
class Writer:
    """What one rank has written to its run so far, over all its starts (a restart adds one).

    Attributes:
        rank: The global rank whose copies these are.
        run_id: W&B run id ("" until the run's first record is read).
        project: W&B project.
        entity: W&B entity, where the W&B server named it (online runs).
        online: Whether the newest start logs online (an offline fallback does not).
        rows: History rows logged.
        last_step: The newest row's `_step`.
        last_time: When the newest row was logged (its `_timestamp`, seconds since the epoch).
        metrics: The last value of each user metric (keys not starting with `_`).
        curves: The numeric metrics' downsampled curves.
        exit_code: The newest start's exit code, or `None` while it runs (or if its pod was lost).
        starts: Run directories read (one per start).
    """

    rank: int
    run_id: str = ""
    project: str = ""
    entity: str = ""
    online: bool = False
    rows: int = 0
    last_step: int | None = None
    last_time: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, Curve] = field(default_factory=dict)
    exit_code: int | None = None
    starts: int = 0

    def apply(self, record: Any) -> None:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            self.run_id, self.project = record.run.run_id, record.run.project
            self.entity = record.run.entity or self.entity
        elif kind == "history":
            self.rows += 1
            row = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            step = int(_json_value(row.get("_step", "0")))
            self.last_step = step
            if "_timestamp" in row:
                self.last_time = float(_json_value(row["_timestamp"]))
            for key, raw in row.items():
                if key.startswith("_"):
                    continue
                value = _json_value(raw)
                self.metrics[key] = value
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    curve = self.curves.get(key)
                    if curve is None:
                        curve = self.curves[key] = Curve()
                    curve.add(step, float(value))
        elif kind == "exit":
            self.exit_code = record.exit.exit_code


def _json_value(raw: str) -> Any:
    """`json.loads(raw)`, quicker for the numbers that most values are (`float` reads JSON's `NaN`
    and `Infinity` as W&B writes them)."""
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return json.loads(raw)


def _begun(key: tuple[int, str]) -> tuple[int, str, int, str]:
    """A rank's start, ordered by when it began: its run directory's name holds the time
    (`[offline-]run-<YYYYMMDD_HHMMSS>-<run id>...`), whether it logged online or offline."""
    rank, run_dir = key
    return rank, run_dir.removeprefix("offline-").removeprefix("run-")[:15], len(run_dir), run_dir


@dataclass
class _Cursor:
    """How far one stored `.wandb` log has been fetched (`have`) and parsed (`start`)."""

    have: int = 0
    start: int = 0  # the file offset of the next record to parse (0: the header is not read yet)
    tail: bytes = b""  # the bytes from `start` to `have`
    valid: bool = True


class StoredRuns:
    """The writers whose copies lie under `prefix` (a task's `.../wandb/<action>` prefix).

    With `share` below 1, a refresh paces its reads and its parsing so that they run at most that
    share of the time (sleeping, and so letting other threads of the process run, between bursts
    of at most `_storage.BURST_S`): the report thread's refresh takes longer and holds the GIL
    less at a time.

    Attributes:
        bytes_read: Bytes of the logs fetched so far.
        requests: Storage requests made so far (listings, manifests and pieces).
    """

    def __init__(self, prefix: str, share: float = 1.0) -> None:
        self.prefix = prefix
        self.share = share
        self.writers: dict[int, Writer] = {}
        self.bytes_read = 0
        self.requests = 0
        self._cursors: dict[tuple[int, str], _Cursor] = {}
        self._tags: dict[str, str] = {}  # each manifest's tag when last read

    def refresh(self) -> None:
        """Read what was copied since the last refresh.

        Raises:
            OSError: The storage cannot be listed or read (the next refresh tries again).
        """
        listed = _storage.list_flat(_storage.join(self.prefix, MANIFESTS))
        self.requests += 1 + len(listed) // 1000
        changed = {path: entry.tag for path, entry in listed.items() if self._tags.get(path) != entry.tag}
        uris = {path: _storage.join(self.prefix, MANIFESTS, path) for path in changed if _MANIFEST.match(path)}
        manifests = _storage.read_many(list(uris.values()), share=self.share)
        self.requests += len(uris)
        wanted: dict[tuple[int, str], tuple[str, list[Piece]]] = {}
        behind: dict[tuple[int, str], tuple[str, Manifest, str, int, Piece]] = {}  # reading an index first
        for path, uri in uris.items():
            found, data = _MANIFEST.match(path), manifests[uri]
            if found is None or data is None:
                continue
            key = (int(found.group(1)), found.group(2))
            manifest = Manifest.from_json(data)
            log = next((name for name in manifest.files if _LOG.match(name)), None)
            cursor = self._cursors.get(key) or _Cursor()
            if log is None:  # nothing to read in it yet
                self._tags[path] = changed[path]
            elif (index := manifest.index_for(log, cursor.have)) is not None:
                behind[key] = (path, manifest, log, cursor.have, index)
            else:
                wanted[key] = (path, manifest.pieces_from(log, cursor.have))
        if behind:
            indexes = _storage.read_many([self._piece_uri(key, e[4]) for key, e in behind.items()], share=self.share)
            self.requests += len(behind)
            for key, (path, manifest, log, have, index) in behind.items():
                data = indexes[self._piece_uri(key, index)]
                if data is not None:  # else replaced meanwhile: read with the next refresh's manifest
                    wanted[key] = (path, manifest.pieces_from(log, have, index_pieces(data)))
        pieces = [self._piece_uri(key, p) for key, (_, ps) in wanted.items() for p in ps]
        contents = _storage.read_many(pieces, share=self.share)
        self.requests += len(pieces)
        pace = _storage.Pace(self.share)
        for key in sorted(wanted, key=_begun):  # a rank's starts in the order they began
            pace.sleep()
            rank, run_dir = key
            writer = self.writers.setdefault(rank, Writer(rank))
            if key not in self._cursors:
                self._cursors[key] = _Cursor()
                writer.starts += 1
                writer.online = not run_dir.startswith("offline-")
                writer.exit_code = None
            path, ps = wanted[key]
            read = [(p, contents[self._piece_uri(key, p)]) for p in ps]
            # a manifest counts as read once its pieces are: a read that failed (this refresh
            # raised) or a piece compacted meanwhile is tried again at the next refresh
            if self._read(self._cursors[key], read, writer):
                self._tags[path] = changed[path]

    def _piece_uri(self, key: tuple[int, str], piece: Piece) -> str:
        return _storage.join(self.prefix, f"rank-{key[0]}", key[1], piece.key)

    def _read(self, cursor: _Cursor, pieces: list[tuple[Piece, bytes | None]], writer: Writer) -> bool:
        """Take in the pieces read (in order); whether every one was there."""
        whole = True
        for piece, data in pieces:
            if not cursor.valid or piece.end <= cursor.have:
                continue  # not a W&B log, or read already
            if data is None or piece.start > cursor.have:
                whole = False
                break
            self.bytes_read += len(data)
            cursor.tail += data[cursor.have - piece.start :]
            cursor.have = piece.start + len(data)
        if cursor.start == 0 and cursor.valid:
            if len(cursor.tail) < _HEADER:
                return whole
            cursor.valid = cursor.tail[:4] == _MAGIC
            cursor.tail, cursor.start = cursor.tail[_HEADER:], _HEADER
        if not cursor.valid:
            return whole
        parsed = cursor.start
        for record, end in parse_records(cursor.tail, cursor.start, base=cursor.start, skip=_PASSED_OVER):
            if record is not None:
                writer.apply(record)
            parsed = end
        cursor.tail, cursor.start = cursor.tail[parsed - cursor.start :], parsed
        return whole
