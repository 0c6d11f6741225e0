"""The `log` calls queued while a run opens, kept in a file until the run holds them.

While a rank's run opens in the background (see `_rank_run`), its `log` calls wait in memory. So
that none is lost with a rank killed meanwhile, or with a run that never opens in time, each is
also appended, as one JSON line, to a file beside the run directories, which is copied to storage
with them (every `persist_interval`, and at the end):

    <WANDB_DIR>/wandb/flyte-queued-<YYYYMMDD_HHMMSS>-<run id>[-<label>]/calls.log

Its first line names the writer (what `wandb.init` needs to write the calls again); then one line
per call; then, once the run is open and has every queued call, `{"opened": true}`, or, when the
rank ended before it opened, `{"ended": <exit code>}`.

`sync` writes the calls that no stored run directory holds (see `unwritten`) into a run directory
of their own, after the writer's others, and uploads it with them.

Values that JSON cannot hold (an image, a tensor of more than one value) are left out of the
file, not out of the call: the run still gets them if it opens.

Process: `QueuedCalls` in a rank's own process (appended to from the training thread); the
rest wherever `sync` runs.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._persist import SLOW_COPY_S, RunFilesCopier
from ._runfiles import writers_dir

logger = logging.getLogger("flyte_wandb_elastic")

PREFIX = "flyte-queued-"
CALLS_FILE = "calls.log"  # appended to only: copied in parts, as W&B's own logs are


class QueuedCalls:
    """The file of one writer's queued `log` calls (created at once; see the module docstring).

    Args:
        wandb_dir: The `wandb` directory the writer's run directories go to.
        writer: `id`, `label` and what else `wandb.init` is given (JSON values).
        prefix: Where the file is copied every `interval_s` seconds, from a thread of its own,
            until the run opens (then once more; from then on the run's own files are copied).
    """

    def __init__(
        self, wandb_dir: Path, writer: dict[str, Any], prefix: str | None = None, interval_s: float = 30.0
    ) -> None:
        suffix = f"{writer['id']}-{writer['label']}" if writer.get("label") else str(writer["id"])
        self.dir = wandb_dir / f"{PREFIX}{time.strftime('%Y%m%d_%H%M%S')}-{suffix}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file: Any = open(self.dir / CALLS_FILE, "a", encoding="utf-8")  # noqa: SIM115 - closed by `close`
        self._write({"writer": writer})
        self.copier: RunFilesCopier | None = None
        if prefix is not None:  # quiet: the run's own copier warns of a storage outage
            self.copier = RunFilesCopier(self.dir, prefix, interval_s, quiet=True)
            self.copier.start()

    def add(self, data: dict[str, Any], step: int | None, commit: bool | None) -> None:
        """Append one queued `log` call."""
        self._write({"log": _jsonable(data), "step": step, "commit": commit})

    @property
    def where(self) -> str:
        """Where the file is kept: its copy in storage, or else on this pod."""
        return self.copier.uri if self.copier is not None else str(self.dir)

    @property
    def is_open(self) -> bool:
        """Whether calls are still kept (the run has not opened, and the rank has not ended)."""
        return self._file is not None

    def close(self) -> None:
        """The run is open and holds every call: say so in the file (then `forget` it)."""
        self._write({"opened": True}, last=True)

    def forget(self) -> None:
        """Copy the closed file a last time, then remove it from the pod: the run's own files go on."""
        if self.copier is not None:
            self.copier.final_copy(SLOW_COPY_S, synced=False, settle=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def end(self, exit_code: int, timeout_s: float) -> None:
        """The rank ends: if the run never opened, record `exit_code` and copy the file a last time."""
        if self.copier is None:
            self._write({"ended": exit_code}, last=True)
        elif self._write({"ended": exit_code}, last=True):
            self.copier.quiet = False  # its rows are nowhere else
            self.copier.final_copy(timeout_s, synced=False, settle=False)
        else:  # the run holds the calls: a last copy still being tried is not needed
            self.copier.cancel()

    def _write(self, line: dict[str, Any], last: bool = False) -> bool:
        """Append `line` (then close the file, if `last`); whether the file was still open.

        Never raises: what cannot be kept is warned about, and the run still gets the call.
        """
        with self._lock:
            if self._file is None:
                return False
            try:
                self._file.write(json.dumps(line, default=str) + "\n")
                self._file.flush()  # to the OS: a killed process loses nothing written
            except Exception as exc:  # the disk is full or gone, or a value JSON refuses
                logger.warning("could not keep a queued call of %s (%s)", self.dir.name, exc)
                last = last or isinstance(exc, OSError)
            if last:
                self._file.close()
                self._file = None
            return True


def _jsonable(value: Any) -> Any:
    """`value` as JSON holds it: dicts and lists through, scalars (numpy's, torch's) as numbers.

    Raises:
        TypeError: A value JSON cannot hold (left out by the caller, if it is inside a dict).
    """
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            try:
                out[str(key)] = _jsonable(item)
            except TypeError:  # an image, a tensor of many values: the run gets it, the file does not
                continue
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    try:
        return _jsonable(value.item())  # a numpy or torch scalar
    except Exception:
        raise TypeError(f"{type(value).__name__} is not kept in the file") from None


@dataclass
class Queued:
    """What one calls file holds."""

    dir: Path
    writer: dict[str, Any]
    calls: list[dict[str, Any]]
    opened: bool
    ended: int | None

    @property
    def started(self) -> str:
        """When the file was created (`YYYYMMDD_HHMMSS`), before its run directory."""
        return self.dir.name.removeprefix(PREFIX)[:15]


def read_queued(path: Path) -> Queued:
    """Read a calls file (`<dir>/calls.log`); a torn last line (a killed rank's) is left out."""
    writer: dict[str, Any] = {}
    calls: list[dict[str, Any]] = []
    opened, ended = False, None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            break
        if "writer" in item:
            writer = item["writer"]
        elif "log" in item:
            calls.append(item)
        opened = opened or bool(item.get("opened"))
        ended = item.get("ended", ended)
    return Queued(path.parent, writer, calls, opened, ended)


def queued_files(root: Path) -> list[Path]:
    """Every calls file under `root`, sorted."""
    return sorted(p for p in root.rglob(f"{PREFIX}*/{CALLS_FILE}") if p.is_file())


def writers_starts(queued: Queued, run_dirs: list[Path]) -> list[Path]:
    """The run directories of the writer of `queued` beside it, in the order they were begun."""
    run_id, label = str(queued.writer.get("id")), queued.writer.get("label")
    mine = [d for d in run_dirs if d.parent == queued.dir.parent and writers_dir(d.name, run_id, label)]
    return sorted(mine, key=lambda d: (begun(d), d.name))


def its_start(queued: Queued, starts: list[Path], until: str | None = None) -> Path | None:
    """Of the writer's `starts`, the one the queued calls went to, if it is stored: the first begun
    no earlier than them, and before `until` (when the writer's next file of queued calls began)."""
    return next((d for d in starts if queued.started <= begun(d) < (until or "~")), None)


def begun(run_dir: Path) -> str:
    """When a run directory's writer began (`YYYYMMDD_HHMMSS`, from its name)."""
    return run_dir.name.removeprefix("offline-").removeprefix("run-")[:15]


def unwritten(queued: Queued, rows_written: int) -> list[dict[str, Any]]:
    """The queued calls that a run directory holding `rows_written` of the writer's first rows lacks.

    Plain calls (`log(data)`, no `step` or `commit`) make one row each, in order: the first
    `rows_written` are held. With explicit steps or commits, calls cannot be matched to rows: all
    of them are written again only where none was held.
    """
    plain = all(c.get("step") is None and c.get("commit") is None for c in queued.calls)
    if plain:
        return queued.calls[rows_written:]
    if rows_written:
        logger.warning(
            "%s: some of its %d queued call(s) may be missing from its run, which cannot tell which "
            "(they give explicit steps); none is written again",
            queued.dir.name,
            len(queued.calls),
        )
        return []
    return queued.calls
