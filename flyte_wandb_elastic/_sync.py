"""`sync`: upload every run stored under a URI to the W&B server of the environment.

For clusters whose pods cannot reach W&B (air-gapped, or a server lost mid-run): the run files
each rank copied to storage are uploaded from anywhere that can reach both, with W&B's own sync
machinery, wandb-core's (what `wandb sync` and `wandb beta sync` run), in this one process:
`parallel` writers at a time, the starts of one writer (a restart's among them) one after the
other and in order, so its steps arrive as they were logged. Each run directory synced is recorded
beside its copy in storage (`flyte-wandb-synced.json`), so a second `sync` sends nothing; an
online run whose upload finished in the pod is recorded so by the pod. `ranks` picks writers: only
the copies under their `rank-<r>` folders are fetched and uploaded (one rank's offline run, say,
among thousands).

What is read from storage grows with what is not synced yet: the listings that find the copies
(`_persist.find_copies`: the manifests folders, not the copies) show which carry the synced
record, and no object of those is read (except in a folder beside a file of queued calls that may
need its writer's earlier starts, see `_queued_starts`); a copy the listings do not show as synced
is read for its record beside it first (one request). The same copies found are fetched: nothing
is listed twice.

Each start's upload creates at most one run on the server, and uploads begin at most
`DEFAULT_RUN_CREATIONS_PER_S` (80) a second, W&B's limit of run creations per project
(`_wandb_limits`): one every 12.5 ms at most, from whichever thread.

Process: wherever the command runs (a laptop, or a Flyte task: see `examples/sync_task.py`).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import _storage
from ._persist import SYNCED_MARKER, StoredCopy, fetch_copies, find_copies, mark_synced, read_synced, run_dirs
from ._queued import PREFIX as QUEUED_PREFIX
from ._queued import Queued, begun, its_start, queued_files, read_queued, unwritten, writers_starts
from ._runfiles import iter_records, read_run_file, recorded_exit_code
from ._wandb_limits import DEFAULT_RUN_CREATIONS_PER_S

DEFAULT_BASE_URL = "https://api.wandb.ai"
DEFAULT_PARALLEL = 4
_UNENDED = "no end recorded"
_EMPTY = "holds no record"
_EARLIER_FAILED = "an earlier start failed"
# `[offline-]run-<YYYYMMDD_HHMMSS>-<run id>...`: a run's writer, started at that time
_RUN_DIR = re.compile(r"^(?:offline-)?run-(\d{8}_\d{6})-")
# a rank's copies lie under `.../rank-<r>/` (see `_planner.run_files_prefix`)
_RANK_DIR = re.compile(r"^rank-(\d+)$")


class SyncError(RuntimeError):
    """Nothing can be synced: no API key, or no reachable server."""


@dataclass
class SyncReport:
    """What one `sync` did: the run directories uploaded, skipped (already synced) and failed.

    `unended` lists the uploaded ones that recorded no end (still running, or their pod was lost):
    they are not recorded as synced, so the next `sync` sends them again, with what they hold then.
    `empty` lists those whose writer wrote no record (its service died before its first flush):
    there is nothing to upload, and `wandb sync` refuses them.
    """

    synced: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unended: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)


def check_server(environ: dict[str, str] | os._Environ[str]) -> str:
    """The W&B base URL of the environment, once it is known to answer and a key is set.

    Raises:
        SyncError: `WANDB_API_KEY` is not set, or the server does not answer.
    """
    if not environ.get("WANDB_API_KEY"):
        raise SyncError("no W&B API key: set WANDB_API_KEY (and WANDB_BASE_URL for a self-hosted server)")
    base_url = environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL).rstrip("/")
    try:
        urllib.request.urlopen(base_url, timeout=10).close()
    except urllib.error.HTTPError:
        pass  # it answered
    except (OSError, ValueError) as exc:
        raise SyncError(f"the W&B server at {base_url} (WANDB_BASE_URL) cannot be reached: {exc}") from None
    return base_url


def sync(uri: str, parallel: int = DEFAULT_PARALLEL, ranks: Collection[int] | None = None) -> SyncReport:
    """Upload every run directory stored under `uri` that is not yet recorded as synced.

    What `python -m flyte_wandb_elastic sync [--ranks R,...] URI` does, to the W&B server of the
    environment (`WANDB_BASE_URL`, `WANDB_API_KEY`).

    Args:
        uri: A Flyte run's base directory (local or a storage URI such as `s3://...`), or anything
            under it.
        parallel: Runs uploaded at a time.
        ranks: Only these global ranks' copies (those under a `rank-<r>` folder for one of them);
            `None` for every copy.

    Returns:
        The run directories synced, skipped (already synced) and failed, as storage URIs.

    Raises:
        SyncError: No key or no reachable server (nothing was sent).
        FileNotFoundError: Nothing is stored under `uri` (for `ranks`: nothing of theirs).
    """
    check_server(os.environ)
    report = SyncReport()
    chosen = None if ranks is None else frozenset(ranks)

    def kept(path: str) -> bool:
        return chosen is None or rank_of(path) in chosen

    def missing() -> FileNotFoundError:
        if chosen is None:
            return FileNotFoundError(f"{uri}: nothing is stored there")
        return FileNotFoundError(f"{uri}: nothing is stored there for rank(s) {_ranks_text(chosen)}")

    copies = read_synced(uri, [c for c in find_copies(uri) if kept(_storage.join(uri, c.path))])
    if not copies:
        raise missing()
    passed = _synced_copies(copies)
    wanted = [c for c in copies if c.path not in passed]
    # where the synced record goes beside the manifest too (see `mark_synced`)
    manifested = {_storage.join(uri, c.path) for c in copies if c.listed is None}
    with tempfile.TemporaryDirectory(prefix="flyte-wandb-elastic-sync-") as tmp:
        root: Path | None = None
        if wanted:
            root = fetch_copies(uri, Path(tmp), wanted)
        found = []
        if root is not None:
            found = [(d, _remote(uri, root, d), _writer(d)) for d in run_dirs(root)]
            found = [start for start in found if kept(start[1]) and _relative(uri, start[1]) not in passed]
        skipped = [_storage.join(uri, copy) for copy in sorted(passed) if _RUN_DIR.match(copy.rpartition("/")[2])]
        if not found and not skipped and chosen is not None:
            raise FileNotFoundError(f"{uri}: no run is stored there for rank(s) {_ranks_text(chosen)}")
        report.skipped += skipped
        queued = []
        if root is not None:
            queued = _queued_starts(root, uri, [d for d, _, _ in found], Path(tmp, "queued"), report, manifested)
            queued = [start for start in queued if kept(start[1])]
        starts: dict[str, list[tuple[Path, str]]] = {}
        for run_dir, remote, writer in sorted([*found, *queued], key=lambda start: _started(start[0])):
            if (run_dir / SYNCED_MARKER).exists():
                report.skipped.append(remote)
            else:
                starts.setdefault(writer, []).append((run_dir, remote))
        for remote, error in _upload(starts, parallel, manifested).items():
            if error == _EMPTY:
                report.empty.append(remote)
            elif error is None or error == _UNENDED:
                report.synced.append(remote)
                if error == _UNENDED:
                    report.unended.append(remote)
            else:
                report.failed[remote] = error
    return report


def _relative(uri: str, remote: str) -> str:
    return remote.removeprefix(uri.rstrip("/")).lstrip("/")


def _synced_copies(copies: list[StoredCopy]) -> set[str]:
    """The copies recorded as synced, none of whose objects `sync` needs.

    A writer's file of queued calls not yet synced may need the run files of the writer's earlier
    starts (see `_queued_starts`): every copy in its folder is read then, synced or not.
    """
    synced = {c.path for c in copies if c.synced}
    waiting = {
        c.path.rpartition("/")[0]
        for c in copies
        if not c.synced and c.path.rpartition("/")[2].startswith(QUEUED_PREFIX)
    }
    return {copy for copy in synced if copy.rpartition("/")[0] not in waiting}


def rank_of(path: str) -> int | None:
    """The global rank whose copies hold `path` (its innermost `rank-<r>` folder), or `None`."""
    found = [int(m.group(1)) for name in path.split("/") if (m := _RANK_DIR.match(name))]
    return found[-1] if found else None


def _ranks_text(ranks: Collection[int]) -> str:
    return ", ".join(str(r) for r in sorted(ranks))


def _started(run_dir: Path) -> tuple[str, int, str]:
    """When a run directory's writer started: W&B names a second start in the same second `...-1`."""
    found = _RUN_DIR.match(run_dir.name)
    return (found.group(1) if found else "", len(run_dir.name), run_dir.name)


def _writer(run_dir: Path) -> str:
    """Where a run directory lies, and its run id (from its run file's name)."""
    run_id = next((f.stem.removeprefix("run-") for f in run_dir.glob("run-*.wandb")), run_dir.name)
    return f"{run_dir.parent}/{run_id}"


def _queued_starts(
    root: Path, uri: str, found: list[Path], into: Path, report: SyncReport, manifested: Collection[str]
) -> list[tuple[Path, str, str]]:
    """A run directory for each stored file of queued calls whose run lacks some (see `_queued`).

    Each is a later start of its writer: synced after the others, going on from the last step
    stored, ending as the writer's latest stored start did (or as its rank recorded, or 1 where
    the rank was lost), and recorded as synced beside the file of calls in storage.
    """
    writers: dict[tuple[Path, str, str | None], list[Queued]] = {}
    for path in queued_files(root):
        queued = read_queued(path)
        if _done(queued):  # recorded, so that the next `sync` need not read its folder
            remote = _remote(uri, root, queued.dir)
            mark_synced(
                remote, "python -m flyte_wandb_elastic sync (its calls are in its run)", None, remote in manifested
            )
        key = (queued.dir.parent, str(queued.writer.get("id")), queued.writer.get("label"))
        writers.setdefault(key, []).append(queued)
    out: list[tuple[Path, str, str]] = []
    for files in writers.values():
        files.sort(key=lambda q: (q.started, q.dir.name))
        if not any(_pending(q) for q in files):
            continue  # no run file to read
        starts = writers_starts(files[0], found)
        try:
            runs = {d: [read_run_file(f) for f in d.glob("run-*.wandb")] for d in starts}
        except (OSError, ValueError) as exc:
            for queued in files:
                report.failed[_remote(uri, root, queued.dir)] = f"its run files cannot be read: {exc}"
            continue
        steps = [r.rows[-1]["_step"] for rs in runs.values() for r in rs if r.rows]
        for k, queued in enumerate(files):
            if not _pending(queued):
                continue
            start = its_start(queued, starts, files[k + 1].started if k + 1 < len(files) else None)
            calls = unwritten(queued, sum(len(r.rows) for r in runs[start]) if start else 0)
            if not calls:
                continue
            # the run ends as its latest start did, where that began after these calls
            latest = [r.exit_code for r in runs[starts[-1]]] if starts and begun(starts[-1]) >= queued.started else []
            exit_code = next((c for c in latest if c is not None), queued.ended)
            plain = all(c.get("step") is None for c in calls)
            next_step = max(steps) + 1 if plain and steps else None
            from . import _wandb_run

            try:
                run_dir = _wandb_run.write_queued(
                    queued, calls, next_step, 1 if exit_code is None else exit_code, into / str(len(out))
                )
                steps += [row["_step"] for f in run_dir.glob("run-*.wandb") for row in read_run_file(f).rows[-1:]]
            except Exception as exc:  # the rest is still synced
                report.failed[_remote(uri, root, queued.dir)] = (
                    f"could not write its {len(calls)} queued call(s): {exc}"
                )
                continue
            out.append((run_dir, _remote(uri, root, queued.dir), f"{queued.dir.parent}/{queued.writer.get('id')}"))
    return out


def _done(queued: Queued) -> bool:
    """Whether a file of queued calls, not recorded as synced, is final and needs nothing sent: its
    run opened and holds every call, or its rank ended with no call queued."""
    if (queued.dir / SYNCED_MARKER).exists():
        return False
    return queued.opened or (queued.ended is not None and not queued.calls)


def _pending(queued: Queued) -> bool:
    """Whether the calls may be missing from their run: it never said it opened, and they were not synced."""
    return bool(queued.calls) and not queued.opened and not (queued.dir / SYNCED_MARKER).exists()


def _remote(uri: str, root: Path, local: Path) -> str:
    """Where the copy at `local` (under `root`, fetched from `uri`) is in storage."""
    return _storage.join(uri, local.relative_to(root).as_posix())


def _upload(
    starts: dict[str, list[tuple[Path, str]]], parallel: int, manifested: Collection[str]
) -> dict[str, str | None]:
    """Upload `parallel` run directories at a time, each writer's starts in order (once one fails,
    its later ones wait for the next `sync`); record each ended one as synced.

    A writer holds one of the `parallel` slots only while wandb-core uploads its start: what comes
    before and after (the checks of its records, the synced record written to storage) runs on
    threads of their own meanwhile.

    Returns:
        For each start's storage URI: `None`, `_UNENDED` (uploaded, not recorded), `_EMPTY`
        (nothing to upload), or the error.
    """
    uploading = _Slots(max(1, parallel), 1.0 / DEFAULT_RUN_CREATIONS_PER_S)

    def in_order(its: list[tuple[Path, str]]) -> list[tuple[str, str | None]]:
        outcomes: list[tuple[str, str | None]] = []
        for run_dir, remote in its:
            failed = any(e not in (None, _UNENDED, _EMPTY) for _, e in outcomes)
            done = _EARLIER_FAILED if failed else _upload_start(run_dir, remote, uploading, remote in manifested)
            outcomes.append((remote, done))
        return outcomes

    with ThreadPoolExecutor(max_workers=2 * max(1, parallel)) as pool:
        return {remote: error for outcomes in pool.map(in_order, starts.values()) for remote, error in outcomes}


class _Slots:
    """At most `count` uploads at a time, begun at least `interval_s` apart, from any thread."""

    def __init__(self, count: int, interval_s: float) -> None:
        self.interval_s = interval_s
        self._free = threading.BoundedSemaphore(count)
        self._next = 0.0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        with self._free:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._next)
                self._next = start + self.interval_s
            time.sleep(start - now)
            yield


def _upload_start(run_dir: Path, remote: str, uploading: _Slots, manifest: bool) -> str | None:
    """Upload one run directory with W&B's sync (in this process) and record it as synced if it ended.

    wandb-core marks each file it read to the end (`<file>.synced`) and reports what the server
    refused (after which it marks the file all the same): the upload succeeded where it marked
    every file and reported no error.

    Returns:
        `None`, `_UNENDED` (uploaded, not recorded), `_EMPTY` (nothing to upload), or the error.
    """
    from . import _wandb_run

    if not _holds_records(run_dir):
        return _EMPTY
    files = sorted(run_dir.glob("run-*.wandb"))

    def mark(f: Path) -> int | None:
        synced = f.with_name(f.name + ".synced")
        return synced.stat().st_mtime_ns if synced.exists() else None

    before = [mark(f) for f in files]
    try:
        with uploading.one():
            messages = _wandb_run.upload_run_files(files)
    except Exception as exc:  # the service did not start, or died
        return f"W&B's sync failed: {type(exc).__name__}: {exc}"
    errors = [text.strip() for is_error, text in messages if is_error]
    if errors:
        return errors[0]
    if any(mark(f) in (None, was) for f, was in zip(files, before, strict=True)):
        return "W&B's sync did not finish it"
    if not _ended(run_dir):
        return _UNENDED
    mark_synced(remote, "python -m flyte_wandb_elastic sync", manifest=manifest)
    return None


def _holds_records(run_dir: Path) -> bool:
    """Whether the run directory's writer wrote any record (else `wandb sync` fails on it)."""
    try:
        return any(next(iter_records(f), None) is not None for f in run_dir.glob("run-*.wandb"))
    except ValueError:  # not a W&B log at all: `wandb sync` says why
        return True


def _ended(run_dir: Path) -> bool:
    """Whether the run directory's writer recorded its end (an exit record)."""
    return all(recorded_exit_code(f) is not None for f in run_dir.glob("run-*.wandb"))
