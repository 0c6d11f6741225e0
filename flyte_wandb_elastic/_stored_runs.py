"""What the run files copied to storage say so far, read incrementally: the report tab's source.

Each rank's copies lie under `<action prefix>/rank-<r>/<run dir>/` (see `run_files_prefix`), the
`.wandb` transaction log as numbered parts (see `_persist`). `StoredRuns.refresh()` fetches only
the parts it has not read yet and parses only the records they complete. Each rank's writer keeps
its row count, the last value of each metric and bounded, downsampled curves, so the work and
memory of a refresh grow with what was logged since the last one, not with the run.

Process: rank 0's process, in the report's thread (see `_report`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from . import _storage
from ._persist import PARTS_SUFFIX
from ._runfiles import _HEADER, _MAGIC, parse_records
from ._values import nonfinite_name

# Finite points kept per curve: between MAX_POINTS and twice as many, evenly spread over the steps.
MAX_POINTS = 100
# Runs of non-finite values kept per curve (the first point of each): up to 2 * MAX_BREAKS, evenly
# spread over the runs once there are more.
MAX_BREAKS = 100
_PART = re.compile(rf"^rank-(\d+)/([^/]+)/run-[^/]+\.wandb{re.escape(PARTS_SUFFIX)}/(\d+)$")


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
            step = int(json.loads(row.get("_step", "0")))
            self.last_step = step
            if "_timestamp" in row:
                self.last_time = float(json.loads(row["_timestamp"]))
            for key, raw in row.items():
                if key.startswith("_"):
                    continue
                value = json.loads(raw)
                self.metrics[key] = value
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.curves.setdefault(key, Curve()).add(step, float(value))
        elif kind == "exit":
            self.exit_code = record.exit.exit_code


@dataclass
class _Cursor:
    """How far one stored `.wandb` log has been fetched (`have`) and parsed (`start`)."""

    have: int = 0
    start: int = 0  # the file offset of the next record to parse (0: the header is not read yet)
    tail: bytes = b""  # the bytes from `start` to `have`
    valid: bool = True


class StoredRuns:
    """The writers whose copies lie under `prefix` (a task's `.../wandb/<action>` prefix)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.writers: dict[int, Writer] = {}
        self.bytes_read = 0
        self._cursors: dict[tuple[int, str], _Cursor] = {}

    def refresh(self) -> None:
        """Read what was copied since the last refresh.

        Raises:
            OSError: The storage cannot be listed or read (the next refresh tries again).
        """
        parts: dict[tuple[int, str], list[tuple[int, int, str]]] = {}
        for path, size in _storage.list_sizes(self.prefix).items():
            found = _PART.match(path)
            if found:
                rank, run_dir, offset = int(found.group(1)), found.group(2), int(found.group(3))
                parts.setdefault((rank, run_dir), []).append((offset, size, path))
        for key in sorted(parts):  # a rank's starts in the order they began (their names hold the time)
            rank, run_dir = key
            writer = self.writers.setdefault(rank, Writer(rank))
            if key not in self._cursors:
                self._cursors[key] = _Cursor()
                writer.starts += 1
                writer.online = not run_dir.startswith("offline-")
                writer.exit_code = None
            self._read(self._cursors[key], sorted(parts[key]), writer)

    def _read(self, cursor: _Cursor, parts: list[tuple[int, int, str]], writer: Writer) -> None:
        for offset, size, path in parts:
            if not cursor.valid or offset + size <= cursor.have:
                continue  # not a W&B log, or read already
            if offset > cursor.have:
                break  # a gap: that copy has not arrived (yet)
            data = _storage.read_bytes(_storage.join(self.prefix, path)) or b""
            self.bytes_read += len(data)
            cursor.tail += data[cursor.have - offset :]
            cursor.have = offset + len(data)
        if cursor.start == 0 and cursor.valid:
            if len(cursor.tail) < _HEADER:
                return
            cursor.valid = cursor.tail[:4] == _MAGIC
            cursor.tail, cursor.start = cursor.tail[_HEADER:], _HEADER
        if not cursor.valid:
            return
        parsed = cursor.start
        for record, end in parse_records(cursor.tail, cursor.start, base=cursor.start):
            writer.apply(record)
            parsed = end
        cursor.tail, cursor.start = cursor.tail[parsed - cursor.start :], parsed
