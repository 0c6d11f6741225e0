"""Reading W&B offline run files (`run-<id>.wandb`) back: what each rank really logged.

The file is a transaction log: a 7-byte header, then LevelDB-log-style 32 KiB blocks of chunks
holding serialized `Record` messages. Only wandb's protobuf classes are used here (no SDK calls).
A truncated or corrupt tail ends the read quietly: a rank killed mid-write still shows what it
flushed.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._values import json_safe, short

_MAGIC = b":W&B"
_HEADER = 7
_BLOCK = 32 * 1024
_CHUNK_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def local_wandb_dir(init_dir: str | None) -> Path:
    """Where W&B puts a process's run directories: `<dir>/wandb`, `dir` as `wandb.init` resolves it."""
    return Path(init_dir or os.environ.get("WANDB_DIR") or os.getcwd(), "wandb")


def writers_dir(name: str, run_id: str, label: str | None) -> bool:
    """Whether the run directory `name` (`[offline-]run-<time>-<run id>[-<label>]`) is this writer's."""
    rest = name.removeprefix("offline-").removeprefix("run-").partition("-")[2]
    return rest == (f"{run_id}-{label}" if label else run_id)


def iter_records(path: str | Path, skip: frozenset[int] = frozenset()) -> Iterator[Any]:
    """Yield the `wandb_internal_pb2.Record` messages of one `.wandb` file, in order (none if empty);
    `None` in place of those whose type is in `skip` (see `parse_records`).

    Raises:
        ValueError: The file does not start with the W&B header.
    """
    data = Path(path).read_bytes()
    if not data:  # its service died before it first flushed (every 15 s by default)
        return
    if len(data) < _HEADER or data[:4] != _MAGIC:
        raise ValueError(f"{path}: not a W&B transaction log (missing the ':W&B' header)")
    for record, _ in parse_records(data, _HEADER, skip=skip):
        yield record


def parse_records(
    data: bytes, start: int, base: int = 0, skip: frozenset[int] = frozenset()
) -> Iterator[tuple[Any, int]]:
    """Yield each whole record in `data` from file offset `start`, with the offset just after it.

    `data` holds the file's bytes from offset `base` (a reader that keeps only the unread tail of
    a growing file passes where that tail starts). `start` must be the header's end or an offset
    this function yielded. Stops quietly at a truncated or torn tail, which a later, longer
    `data` may complete. A record whose type (the field number of its `record_type`, see
    `SUMMARY` and its neighbours) is in `skip` is not decoded: `None` is yielded in its place.
    """
    from wandb.proto import wandb_internal_pb2

    pos = start
    end = base + len(data)
    pending = b""
    while pos + _CHUNK_HEADER <= end:
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _CHUNK_HEADER:  # block trailer padding
            pos += left_in_block
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos - base)
        body = data[pos - base + _CHUNK_HEADER : pos - base + _CHUNK_HEADER + length]
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += left_in_block
            continue
        if len(body) < length or zlib.crc32(bytes([kind]) + body) & 0xFFFFFFFF != crc:
            return  # truncated or torn tail
        pos += _CHUNK_HEADER + length
        if kind in (_FULL, _FIRST):
            pending = body
        else:
            pending += body
        if kind in (_FIRST, _MIDDLE):
            continue
        if kind not in (_FULL, _LAST):
            return
        if skip and _record_type(pending) in skip:
            pending = b""
            yield None, pos
            continue
        record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
        record.ParseFromString(pending)
        pending = b""
        yield record, pos


# Field numbers of `Record.record_type` (wandb_internal.proto) that readers may pass over.
SUMMARY, OUTPUT, CONFIG, FILES, STATS, TELEMETRY, METRIC, OUTPUT_RAW = 3, 4, 5, 6, 7, 11, 12, 13
# every type numbered below 16 (history, summary, ... output_raw): none is the end (`exit`, 18)
_NOT_THE_END = frozenset(range(2, 16))


def _record_type(message: bytes) -> int:
    """The field number of a serialized `Record`'s first field after `num` (field 1): its
    `record_type` where that is a field of the oneof (at most one is set), else 0 (decode it)."""
    pos = 0
    if message[:1] == b"\x08":  # num, a varint
        pos = 1
        while pos < len(message) and message[pos] & 0x80:
            pos += 1
        pos += 1
    if pos >= len(message):
        return 0
    tag = message[pos]
    if tag & 0x80:  # a field number above 15: not one of those passed over
        return 0
    return tag >> 3


@dataclass
class RunFile:
    """What one writer recorded in one offline run file.

    Attributes:
        path: The `.wandb` file.
        run_id: W&B run id.
        project: W&B project.
        group: W&B group ("" when none).
        label: Shared-mode writer label, or "" outside shared mode.
        primary: Whether this writer is the run's primary (it writes the environment record).
        config: The run config as logged.
        rows: The logged history rows (each a dict with `_step`).
        summary: The last summary values.
        exit_code: The recorded exit code, or `None` when the process never finished the run.
    """

    path: Path
    run_id: str = ""
    project: str = ""
    group: str = ""
    label: str = ""
    primary: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    @property
    def last_metrics(self) -> dict[str, Any]:
        """The user metrics of the last row (keys starting with `_` left out)."""
        return {k: v for k, v in (self.rows[-1] if self.rows else {}).items() if not k.startswith("_")}

    @property
    def run_dir(self) -> str:
        """The name of the run's directory (it holds the start time: runs of several jobs differ)."""
        return self.path.parent.name

    def as_dict(self) -> dict[str, Any]:
        """This run file as strict JSON-serializable data (the inspector's `--json` output): a
        non-finite value is the string `"NaN"`, `"Infinity"` or `"-Infinity"`."""
        return json_safe(
            {
                "run_id": self.run_id,
                "project": self.project,
                "group": self.group,
                "label": self.label,
                "primary": self.primary,
                "steps": len(self.rows),
                "exit_code": self.exit_code,
                "run_dir": self.run_dir,
                "path": str(self.path),
                "last_metrics": self.last_metrics,
                "summary": self.summary,
                "config": self.config,
            }
        )


def read_run_file(path: str | Path) -> RunFile:
    """Read one `.wandb` file into a `RunFile`."""
    run = RunFile(path=Path(path))
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.project, run.group = record.run.run_id, record.run.project, record.run.run_group
            run.config.update(_decode_config(record.run.config.update))
        elif kind == "config":
            run.config.update(_decode_config(record.config.update))
        elif kind == "history":
            run.rows.append(_decode_items(record.history.item))
        elif kind == "summary":
            run.summary.update(_decode_items(record.summary.update))
        elif kind == "environment":
            run.primary = True
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
        elif kind == "stats":
            for item in record.stats.item:
                _, sep, label = item.key.partition("/l:")
                if sep and not run.label:
                    run.label = label
    return run


def recorded_exit_code(path: str | Path) -> int | None:
    """`read_run_file(path).exit_code`, without decoding the rows (about 10 times faster)."""
    code = None
    for record in iter_records(path, skip=_NOT_THE_END):
        if record is not None and record.WhichOneof("record_type") == "exit":
            code = record.exit.exit_code
    return code


def find_run_files(root: str | Path) -> list[Path]:
    """Every `run-*.wandb` file under `root`, sorted by path."""
    return sorted(Path(root).rglob("run-*.wandb"))


def read_run_files(root: str | Path) -> list[RunFile]:
    """Read every run file under `root` (a `WANDB_DIR` or its `wandb/` folder)."""
    return [read_run_file(p) for p in find_run_files(root)]


def format_table(runs: list[RunFile]) -> str:
    """One row per run file: id, project, group, label, primary, steps, exit code, run directory
    and last metrics, sorted by run id, label and directory."""
    header = ("run id", "project", "group", "label", "primary", "steps", "exit", "run dir", "last metrics")
    rows = [
        (
            r.run_id,
            r.project or "-",
            r.group or "-",
            r.label or "-",
            "yes" if r.primary else "no",
            str(len(r.rows)),
            "-" if r.exit_code is None else str(r.exit_code),
            r.run_dir,
            ", ".join(f"{k}={short(v)}" for k, v in sorted(r.last_metrics.items())) or "-",
        )
        for r in sorted(runs, key=lambda r: (r.run_id, r.label, r.run_dir))
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _decode_items(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key = item.key or "/".join(item.nested_key)
        out[key] = json.loads(item.value_json)
    return out


def _decode_config(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key = item.key or "/".join(item.nested_key)
        value = json.loads(item.value_json)
        # wandb stores config values as {"value": v, "desc": ...}
        out[key] = value.get("value", value) if isinstance(value, dict) and "value" in value else value
    return out
