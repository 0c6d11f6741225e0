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

Where a task has `report=True`, each node's first rank also stores a summary of its node's writers
beside the manifests (`manifests/node-<n>.summary.json`, see `_node_summary`): the same listing
finds the summaries that changed, and a writer a summary holds is taken from it (one read per
changed node) and its copies are not read at all. Writers that no summary holds (a node whose
summary could not be written, copies of an earlier version) are read from their copies, as are
those whose node's last summary holds no end of theirs (see `read_from_copies`).

Process: rank 0's process, in the report's thread (see `_report`).
"""

from __future__ import annotations

import base64
import json
import math
import re
import sys
from array import array
from collections.abc import Sequence
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
# Each node's summary of its writers (see `_node_summary`), beside the manifests: the listing that
# finds changed manifests finds changed summaries too (readers of copies pass over it).
_SUMMARY = re.compile(r"^node-\d+\.summary\.json$")
# The most characters of a non-numeric last value a summary holds (the tab shows it as text).
MAX_VALUE_CHARS = 1000
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
        self._read_back: tuple[Sequence[int], Sequence[float]] | None = None  # see `of`

    def add(self, step: int, value: float) -> None:
        self._thaw()
        self.last = (step, value)
        kind = nonfinite_name(value)
        if kind is None:
            self._finite.add((self._seq, step, value))
        elif kind != self._broken:  # a new run of non-finite values (or NaN turned to inf)
            self._breaks.add((self._seq, step, value))
        self._broken = kind
        self._seq += 1

    @classmethod
    def of(cls, steps: Sequence[int], values: Sequence[float]) -> Curve:
        """A curve whose kept points are those of `steps` and `values` (another curve's `shown()`,
        read back), held as they are until a point is added (a summary's thousands of curves cost
        nothing to read)."""
        curve = cls()
        curve._read_back = (steps, values)
        curve._seq = len(steps)
        curve.last = (steps[-1], values[-1]) if len(steps) else None
        return curve

    def _thaw(self) -> None:
        """Keep the points read back as a growing curve keeps its points."""
        if self._read_back is not None:
            items = [(seq, s, v) for seq, (s, v) in enumerate(zip(*self._read_back, strict=True))]
            self._finite.items = [item for item in items if math.isfinite(item[2])]
            self._breaks.items = [item for item in items if not math.isfinite(item[2])]
            self._read_back = None

    def shown(self) -> list[tuple[int, float]]:
        """The kept points in the order they were logged, ending with the newest."""
        if self._read_back is not None:
            return list(zip(*self._read_back, strict=True))
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

    def began(self, run_dir: str) -> None:
        """Count a start of this rank, read from the run directory `run_dir` (named by W&B)."""
        self.starts += 1
        self.online = not run_dir.startswith("offline-")
        self.exit_code = None

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


def start_order(key: tuple[int, str]) -> tuple[int, str, int, str]:
    """A rank's start, ordered by when it began: its run directory's name holds the time
    (`[offline-]run-<YYYYMMDD_HHMMSS>-<run id>...`), whether it logged online or offline."""
    rank, run_dir = key
    return rank, run_dir.removeprefix("offline-").removeprefix("run-")[:15], len(run_dir), run_dir


@dataclass
class Cursor:
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
        self._cursors: dict[tuple[int, str], Cursor] = {}
        self._tags: dict[str, str] = {}  # each manifest's tag when last read
        # the nodes' summaries (see `_node_summary`): each one's tag when last read, the ranks
        # taken from them, and those read from their copies whatever the summaries say
        self._summary_tags: dict[str, str] = {}
        self.summarized: set[int] = set()
        self._from_copies: set[int] = set()

    def refresh(self) -> None:
        """Read what was copied since the last refresh.

        Raises:
            OSError: The storage cannot be listed or read (the next refresh tries again).
        """
        listed = _storage.list_flat(_storage.join(self.prefix, MANIFESTS))
        self.requests += 1 + len(listed) // 1000
        self._read_summaries(listed)
        changed = {path: entry.tag for path, entry in listed.items() if self._tags.get(path) != entry.tag}
        changed = {path: tag for path, tag in changed.items() if not self._summed_up(path)}
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
            cursor = self._cursors.get(key) or Cursor()
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
        for key in sorted(wanted, key=start_order):  # a rank's starts in the order they began
            pace.sleep()
            rank, run_dir = key
            writer = self.writers.setdefault(rank, Writer(rank))
            if key not in self._cursors:
                self._cursors[key] = Cursor()
                writer.began(run_dir)
            path, ps = wanted[key]
            read = [(p, contents[self._piece_uri(key, p)]) for p in ps]
            # a manifest counts as read once its pieces are: a read that failed (this refresh
            # raised) or a piece compacted meanwhile is tried again at the next refresh
            if self._read(self._cursors[key], read, writer):
                self._tags[path] = changed[path]

    # The nodes' summaries: one object per node and interval in place of each writer's copies.

    def _read_summaries(self, listed: dict[str, _storage.Listed]) -> None:
        """Take each writer that a changed summary of its node holds from it (the listing of the
        manifests folder shows the summaries too; one read per changed summary, in parallel). A
        rank whose node's last summary holds no end of it is read from its copies from then on
        (see `read_from_copies`)."""
        changed = {p: e.tag for p, e in listed.items() if _SUMMARY.match(p) and self._summary_tags.get(p) != e.tag}
        found = _storage.read_many([_storage.join(self.prefix, MANIFESTS, p) for p in changed], share=self.share)
        self.requests += len(changed)
        pace = _storage.Pace(self.share)
        for path, tag in changed.items():
            pace.sleep()
            data = found[_storage.join(self.prefix, MANIFESTS, path)]
            if data is None:
                continue
            try:
                summary = read_summary(data)
            except (ValueError, KeyError, TypeError):  # not one of ours: its writers are read from their copies
                self._summary_tags[path] = tag
                continue
            for rank, writer in summary.writers.items():
                if rank in self._from_copies:
                    continue
                if summary.final and writer.exit_code is None:  # its node's end did not see its end
                    self.read_from_copies({rank})
                else:
                    self.writers[rank] = writer
                    self.summarized.add(rank)
            self._summary_tags[path] = tag

    def _summed_up(self, path: str) -> bool:
        """Whether `path` (in the manifests folder) is a node's summary, or the manifest of a
        writer taken from one."""
        found = _MANIFEST.match(path)
        return _SUMMARY.match(path) is not None or (found is not None and int(found.group(1)) in self.summarized)

    def read_from_copies(self, ranks: set[int]) -> None:
        """Read `ranks` from their copies from the next refresh on (from their start), not from
        their nodes' summaries: for writers whose node's summary holds no end of theirs."""
        for rank in ranks - self._from_copies:
            self._from_copies.add(rank)
            if rank in self.summarized:
                self.summarized.discard(rank)
                self.writers.pop(rank, None)
                self._cursors = {key: c for key, c in self._cursors.items() if key[0] != rank}
                self._tags = {p: t for p, t in self._tags.items() if not p.startswith(f"rank-{rank}/")}

    def _piece_uri(self, key: tuple[int, str], piece: Piece) -> str:
        return _storage.join(self.prefix, f"rank-{key[0]}", key[1], piece.key)

    def _read(self, cursor: Cursor, pieces: list[tuple[Piece, bytes | None]], writer: Writer) -> bool:
        """Take in the pieces read (in order); whether every one was there."""
        whole, read = read_log(cursor, pieces, writer)
        self.bytes_read += read
        return whole


def read_log(cursor: Cursor, pieces: list[tuple[Piece, bytes | None]], writer: Writer) -> tuple[bool, int]:
    """Take the next bytes of one `.wandb` log into `writer`: `pieces` (in order, `None` for one
    missing) from where `cursor` stands, parsing only the records they complete (from storage, or
    from a file on the pod's disk as `_node_summary` reads it); whether every piece was there, and
    the bytes taken."""
    whole, read = True, 0
    for piece, data in pieces:
        if not cursor.valid or piece.end <= cursor.have:
            continue  # not a W&B log, or read already
        if data is None or piece.start > cursor.have:
            whole = False
            break
        read += len(data)
        cursor.tail += data[cursor.have - piece.start :]
        cursor.have = piece.start + len(data)
    if cursor.start == 0 and cursor.valid:
        if len(cursor.tail) < _HEADER:
            return whole, read
        cursor.valid = cursor.tail[:4] == _MAGIC
        cursor.tail, cursor.start = cursor.tail[_HEADER:], _HEADER
    if not cursor.valid:
        return whole, read
    parsed = cursor.start
    for record, end in parse_records(cursor.tail, cursor.start, base=cursor.start, skip=_PASSED_OVER):
        if record is not None:
            writer.apply(record)
        parsed = end
    cursor.tail, cursor.start = cursor.tail[parsed - cursor.start :], parsed
    return whole, read


# Node summaries (written by `_node_summary`, read by `StoredRuns`): what the tab shows of each of
# a node's writers, in one object per node.


def summary_uri(prefix: str, node: int) -> str:
    """Where node `node`'s summary lies under the action's prefix (`.../wandb/<action>`)."""
    return _storage.join(prefix, MANIFESTS, f"node-{node}.summary.json")


def to_json(node: int, writers: dict[int, Writer], final: bool) -> bytes:
    """A node's summary: for each writer what the tab shows (curves as their kept points)."""
    return json.dumps(
        {
            "node": node,
            "final": final,
            "writers": [
                {
                    "rank": w.rank,
                    "run_id": w.run_id,
                    "project": w.project,
                    "entity": w.entity,
                    "online": w.online,
                    "rows": w.rows,
                    "last_step": w.last_step,
                    "last_time": w.last_time,
                    "metrics": {k: _bounded(v) for k, v in w.metrics.items()},
                    "curves": {k: _packed(c.shown()) for k, c in w.curves.items()},
                    "exit_code": w.exit_code,
                    "starts": w.starts,
                }
                for w in sorted(writers.values(), key=lambda w: w.rank)
            ],
        },
        separators=(",", ":"),
    ).encode()


@dataclass(frozen=True)
class Summary:
    """A node's summary as read back.

    Attributes:
        final: Whether its first rank wrote it at its end (no later one comes).
        writers: Each writer it holds, by rank.
    """

    final: bool
    writers: dict[int, Writer]


def read_summary(data: bytes) -> Summary:
    """A node's summary from its JSON (see `to_json`).

    Raises:
        ValueError: `data` is not a summary.
    """
    doc = json.loads(data)
    writers = {}
    for w in doc["writers"]:
        curves = {k: Curve.of(*_unpacked(packed)) for k, packed in w["curves"].items()}
        fields = {k: w[k] for k in ("run_id", "project", "entity", "online", "rows", "last_step", "last_time")}
        writers[int(w["rank"])] = Writer(
            int(w["rank"]), **fields, metrics=w["metrics"], curves=curves, exit_code=w["exit_code"], starts=w["starts"]
        )
    return Summary(bool(doc["final"]), writers)


def _packed(points: list[tuple[int, float]]) -> list[str]:
    """A curve's points as two base64 strings, of their steps (int64) and of their values (float64,
    NaN and infinities as they are): read back at C speed, unlike JSON's numbers."""
    steps, values = array("q", (s for s, _ in points)), array("d", (v for _, v in points))
    return [base64.b64encode(_little(steps).tobytes()).decode(), base64.b64encode(_little(values).tobytes()).decode()]


def _unpacked(packed: list[str]) -> tuple[array[int], array[float]]:
    steps, values = array("q"), array("d")
    steps.frombytes(base64.b64decode(packed[0]))
    values.frombytes(base64.b64decode(packed[1]))
    if len(steps) != len(values):
        raise ValueError("a curve's steps and values differ in length")
    return _little(steps), _little(values)


def _little(numbers: array[Any]) -> array[Any]:
    """`numbers` in little-endian order (swapped in place on a big-endian machine)."""
    if sys.byteorder == "big":
        numbers.byteswap()
    return numbers


def _bounded(value: Any) -> Any:
    """A last value as the summary holds it: numbers as they are, anything else as its text, cut."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:MAX_VALUE_CHARS]
