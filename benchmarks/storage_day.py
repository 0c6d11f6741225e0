"""A day of a job's storage requests, on real components: the section `--storage-day` of `bench_at_scale.py`.

A sample of writers (`--day-writers`) goes through every copy of a modelled day at the copy
interval a job of the given size gets by default (`_persist.default_persist_interval`: 53.2 s at
1,024 x 8, so 1,622 copies in 24 hours). Each writer is a real run directory whose files grow as
a rank's do: the `.wandb` log one row a second (`--row-s`) of 4 metrics, cut at the end of each
history record of one real log that wandb itself wrote offline for the whole day, `files/output.log`
a printed line every 10 rows (cut at line ends of the same run's own console capture),
`requirements.txt` from the start, and W&B's debug logs. The package's own copier
(`RunFilesCopier.copy()`) copies each writer every interval to a `moto_server` on loopback, and
the report's own reader (`StoredRuns.refresh()`) refreshes after each interval, as rank 0's report
thread does. The S3 server's access log, read as it grows, counts each copy's requests and each
refresh's.

Measured at hour 1 and at hour 24, and compared (the run fails loudly where they differ):

- each copy's requests by kind, over the last 32 copies of the hour (two compaction cycles), copy
  by copy against the copy of the same phase of the 16-copy cycle in hour 1 (an index's PUT, once
  per 256 copies of a file, counted apart);
- the manifest's size over the same copies (asserted: at hour 24 within 1.5x of hour 1's, and at
  every copy of the day naming at most 2 x 16 + 1 pieces and one index per file);
- a refresh after every sample writer copied, one with none changed, and ones with half of them
  changed; every refresh of the day is asserted to read exactly the log bytes copied since the
  last one (the new parts, never a whole segment);
- objects per run (under the writer's prefix, and its manifest) and bytes stored, sent and
  written, by a listing the counts leave out (asserted: sent at most 2.1x written at hour 24);
  the rows the reader holds (asserted: every row copied);
- one writer's copy read back whole as `inspect` and `sync --ranks` read it (`find_copies`, then
  `fetch_copies` of that rank's copy): asserted to make the same LIST requests at both hours.

Then the day at the job's full size: the per-copy and per-refresh counts scaled to every writer.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers import _ACCESS, S3Request, S3Server

PRINT_EVERY = 10  # rows per printed line in the modelled training loop
CYCLE = 16  # copies per compaction cycle (`_persist.COMPACT_PARTS`, checked below)


class AccessLog:
    """The S3 server's requests as its access log grows: each `new()` returns those since the last."""

    def __init__(self, s3: S3Server) -> None:
        self._path = Path(s3.log.name)
        self._at = self._path.stat().st_size

    def new(self) -> list[S3Request]:
        with open(self._path, "rb") as f:
            f.seek(self._at)
            data = f.read()
        whole = data[: data.rfind(b"\n") + 1]
        self._at += len(whole)
        out = []
        for found in _ACCESS.finditer(whole.decode(errors="replace")):
            path, _, query = found.group(2).partition("?")
            out.append(S3Request(found.group(1), path, {k: [] for k in query.split("&") if k}, int(found.group(3))))
        return out


INDEX_PUT = "PUT (index)"  # an index's PUT (see `_manifest`): once per 256 copies of a file


def kinds(requests: list[S3Request]) -> Counter[str]:
    """Requests by kind: LIST (a listing of the bucket), DELETE (S3's batched delete), an index's
    PUT, else the method."""
    out: Counter[str] = Counter()
    for r in requests:
        if r.method == "GET" and r.path.rstrip("/").count("/") == 1 and any(k.startswith("list-type") for k in r.query):
            out["LIST"] += 1
        elif r.method == "PUT" and "/index-" in r.path:
            out[INDEX_PUT] += 1
        elif r.method == "POST" and any(k.startswith("delete") for k in r.query):
            out["DELETE"] += 1
        else:
            out[r.method] += 1
    return out


def said(counts: Counter[str] | dict[str, float]) -> str:
    return ", ".join(f"{k} {v:,.2f}".replace(".00", "") for k, v in sorted(counts.items()) if v) or "none"


def day_run(tmp: Path, rows: int) -> Path:
    """A real offline W&B run directory of `rows` rows of 4 metrics (a line printed every
    `PRINT_EVERY` rows), written by wandb itself."""
    script = (
        "import wandb\n"
        "run = wandb.init(project='p', id='w', mode='offline')\n"
        f"for i in range({rows}):\n"
        "    run.log({'loss': 1 / (i + 1), 'lr': 3e-4, 'grad_norm': 1.0 + i % 7, 'tokens_per_s': 1e5 + i})\n"
        f"    if i % {PRINT_EVERY} == 0:\n"
        "        print(f'step {i} loss {1 / (i + 1):.5f}')\n"
        "run.finish()\n"
    )
    env = {"WANDB_DIR": str(tmp), "WANDB_MODE": "offline", "PATH": str(Path(sys.executable).parent)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
    [run_dir] = (tmp / "wandb").glob("offline-run-*")
    return run_dir


class Growth:
    """Where each file of the written run stood after its first `r` rows (the whole run at the end)."""

    def __init__(self, run_dir: Path) -> None:
        from flyte_wandb_elastic._runfiles import _HEADER, parse_records

        self.files = {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
        [self.log] = [name for name in self.files if name.endswith(".wandb")]
        self.history_ends = [
            end
            for record, end in parse_records(self.files[self.log], _HEADER)
            if record.WhichOneof("record_type") == "history"
        ]
        output = self.files.get("files/output.log", b"")
        self.line_ends = [i + 1 for i, byte in enumerate(output) if byte == ord("\n")]
        self.rows = len(self.history_ends)

    def at(self, rows: int) -> dict[str, bytes]:
        """Each file's bytes after `rows` rows (`requirements.txt` whole from the start; the end of
        the run, its last records and W&B's debug logs whole, only once every row is in)."""
        if rows >= self.rows:
            return self.files
        out = {self.log: self.files[self.log][: self.history_ends[rows - 1]]}
        if self.line_ends:
            lines = min(len(self.line_ends), math.ceil(rows / PRINT_EVERY))
            out["files/output.log"] = self.files["files/output.log"][: self.line_ends[lines - 1]]
        for name, data in self.files.items():
            if name.startswith("logs/"):
                out[name] = data[: len(data) * rows // self.rows]
            elif name not in out and not name.endswith(".log"):
                out[name] = data
        return out


@dataclass
class SampleWriter:
    rank: int
    run_dir: Path
    copier: Any
    sizes: dict[str, int] = field(default_factory=dict)
    copies: list[Counter[str]] = field(default_factory=list)  # each copy's requests
    manifests: list[int] = field(default_factory=list)  # the manifest's size after each copy
    log_copied: int = 0  # bytes of the `.wandb` log copied so far

    def grow(self, files: dict[str, bytes]) -> None:
        """Append to each file what it gained (as W&B appends), or write it whole where it is new."""
        for name, data in files.items():
            path = self.run_dir / name
            had = self.sizes.get(name, 0)
            if len(data) == had:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab" if had else "wb") as f:
                f.write(data[had:])
            self.sizes[name] = len(data)

    def copy(self, log: AccessLog, final: bool = False) -> None:
        if not self.copier.copy(final=final):
            raise AssertionError(f"copy {len(self.copies) + 1} of writer {self.rank} failed")
        self.copies.append(kinds(log.new()))
        manifest = self.copier.manifest
        self.manifests.append(len(manifest.to_json()))
        self.log_copied = sum(size for name, size in self.sizes.items() if name.endswith(".wandb"))
        for name, pieces in manifest.files.items():
            if len(pieces) > 2 * CYCLE + 1:
                raise AssertionError(f"copy {len(self.copies)} of writer {self.rank}: {len(pieces)} pieces of {name}")


def storage_day(ranks: int, writers: int, hours: float, row_s: float, progress: bool = True) -> dict[str, Any]:
    """Run the sample through the day; the measurements at hour 1 and at the last hour, asserted equal."""
    from flyte_wandb_elastic import _persist
    from flyte_wandb_elastic._persist import default_persist_interval

    assert _persist.COMPACT_PARTS == CYCLE, "the windows below are two compaction cycles"
    interval = default_persist_interval(ranks)
    copies = int(hours * 3600 // interval)
    hour1 = int(3600 // interval)
    assert hour1 >= 3 * CYCLE, "hour 1 must hold a steady cycle past the first deletes"
    rows_at = [0] + [max(1, round(k * interval / row_s)) for k in range(1, copies + 1)]
    out: dict[str, Any] = {"ranks": ranks, "writers": writers, "hours": hours, "row_s": row_s}
    out.update(interval_s=interval, copies=copies, hour1_copy=hour1)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        started = time.perf_counter()
        growth = Growth(day_run(tmp / "written", rows_at[-1] + 100))  # the day's copies never reach its end
        out["log_written_s"] = time.perf_counter() - started
        out["files"] = {name: len(data) for name, data in growth.files.items()}
        s3 = S3Server(tmp / "s3")
        s3.start()
        saved = {k: os.environ.get(k) for k in s3.env()}
        os.environ.update(s3.env())
        try:
            out.update(_day(tmp, s3, growth, interval, copies, hour1, rows_at, writers, ranks, progress))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            s3.stop()
    return out


def _day(
    tmp: Path,
    s3: S3Server,
    growth: Growth,
    interval: float,
    copies: int,
    hour1: int,
    rows_at: list[int],
    n: int,
    ranks: int,
    progress: bool,
) -> dict[str, Any]:
    from flyte_wandb_elastic._manifest import MANIFESTS
    from flyte_wandb_elastic._persist import RunFilesCopier
    from flyte_wandb_elastic._storage import list_flat
    from flyte_wandb_elastic._stored_runs import StoredRuns

    log = AccessLog(s3)
    prefix = s3.uri("day", "r1", "wandb", "a0")
    sample = []
    for rank in range(n):
        run_dir = tmp / "pods" / f"rank-{rank}" / f"offline-run-20260101_000000-w{rank}"
        run_dir.mkdir(parents=True)
        sample.append(SampleWriter(rank, run_dir, RunFilesCopier(run_dir, f"{prefix}/rank-{rank}", interval)))
    stored = StoredRuns(prefix)
    refreshes: list[dict[str, Any]] = []  # every refresh: its interval, what changed, requests, seconds

    copied_then = [0]  # log bytes the sample had copied at the last refresh

    def refresh(k: int, changed: int) -> dict[str, Any]:
        log.new()
        read, started = stored.bytes_read, time.perf_counter()
        stored.refresh()
        seconds = time.perf_counter() - started
        entry = {"copy": k, "changed": changed, "requests": kinds(log.new()), "s": seconds}
        entry["bytes_read"] = stored.bytes_read - read
        copied = sum(w.log_copied for w in sample)
        entry["bytes_copied"], copied_then[0] = copied - copied_then[0], copied
        refreshes.append(entry)
        return entry

    def stored_now(rows: int) -> dict[str, Any]:
        """Objects and bytes under each sample writer's prefix (and its manifest), by one listing
        that the counts leave out."""
        log.new()
        listed = list_flat(prefix)
        log.new()
        objects = [sum(1 for key in listed if key.startswith(f"rank-{w.rank}/")) for w in sample]
        manifests = [listed[f"{MANIFESTS}/rank-{w.rank}/{w.run_dir.name}.json"].size for w in sample]
        return {
            "objects_per_run": sum(objects) / n + 1,  # and its manifest
            "objects_min_max": (min(objects) + 1, max(objects) + 1),
            "bytes_stored": sum(entry.size for entry in listed.values()),
            "bytes_sent": sum(w.copier.bytes_sent for w in sample),
            "bytes_written": sum(sum(w.sizes.values()) for w in sample),
            "manifest_bytes": sum(manifests) / n,
            "rows_read": sum(w.rows for w in stored.writers.values()),
            "rows_written": rows * n,
        }

    marks = {hour1: "hour 1", copies: f"hour {math.ceil(copies * interval / 3600)}"}
    at: dict[str, dict[str, Any]] = {}
    half = n // 2
    started = time.perf_counter()
    for k in range(1, copies + 1):
        files = growth.at(rows_at[k])
        for w in sample:
            w.grow(files)
        if k + 1 in marks:  # measured: a refresh after every writer copied, then one with none changed
            for w in sample:
                w.copy(log)
            every = refresh(k, n)
            none = refresh(k, 0)
            at[marks[k + 1]] = {"every": every, "none": none}
        elif k in marks:  # half of the writers copy, a refresh, the other half, a refresh
            for w in sample[:half]:
                w.copy(log)
            some = refresh(k, half)
            for w in sample[half:]:
                w.copy(log)
            rest = refresh(k, n - half)
            at[marks[k]].update(half=some, rest=rest, stored=stored_now(rows_at[k]), copy_window=_window(sample, k))
            at[marks[k]]["manifest_window"] = _manifest_window(sample, k)
            at[marks[k]]["tab"] = tab_at_scale(stored, ranks, interval)
            at[marks[k]]["fetch_one"] = fetch_one(log, prefix, tmp / f"fetched-{k}")
        else:
            for w in sample:
                w.copy(log)
            refresh(k, n)
        if progress and (k % 100 == 0 or k == copies):
            elapsed = time.perf_counter() - started
            print(f"  copy {k:,}/{copies:,} of each of {n} writers, {elapsed:.0f} s", file=sys.stderr, flush=True)
    for w in sample:  # the run's end: its last rows and records, W&B's debug logs, and the last copy
        w.grow(growth.files)
        w.copy(log, final=True)
    end_refresh = refresh(copies + 1, n)
    result_fetch = fetch_one(log, prefix, tmp / "fetched-end")
    end = stored_now(growth.rows)
    result = {"at": at, "end": end, "end_refresh": end_refresh, "day_s": time.perf_counter() - started}
    result["refreshes"] = refreshes
    result["fetch_one_end"] = result_fetch
    steady = [r["bytes_read"] for r in refreshes[1:] if r["changed"] == n and r["copy"] <= copies]
    result["bytes_read_per_refresh"] = {"min": min(steady), "mean": sum(steady) / len(steady), "max": max(steady)}
    result["index_puts"] = sum(c[INDEX_PUT] for w in sample for c in w.copies)
    result["first_copy"] = said(sum((w.copies[0] for w in sample), Counter()))
    _check(sample, refreshes, at, hour1, copies, n)
    for when, held in [*((name, a["stored"]) for name, a in at.items()), ("the end", end)]:
        if held["rows_read"] != held["rows_written"]:
            raise AssertionError(f"at {when} the reader holds {held['rows_read']:,} of {held['rows_written']:,} rows")
    return result


def _window(sample: list[SampleWriter], k: int) -> dict[str, float]:
    """Requests per copy over copies k-31..k of every sample writer (two compaction cycles)."""
    total: Counter[str] = Counter()
    for w in sample:
        for c in w.copies[k - 2 * CYCLE : k]:
            total.update(c)
    return {kind: count / (2 * CYCLE * len(sample)) for kind, count in total.items()}


def _manifest_window(sample: list[SampleWriter], k: int) -> dict[str, float]:
    """The manifest's size over copies k-31..k of every sample writer: mean and largest."""
    sizes = [size for w in sample for size in w.manifests[k - 2 * CYCLE : k]]
    return {"mean": sum(sizes) / len(sizes), "max": max(sizes)}


def _without_index(requests: Counter[str]) -> Counter[str]:
    return Counter({kind: count for kind, count in requests.items() if kind != INDEX_PUT})


def _check(
    sample: list[SampleWriter],
    refreshes: list[dict[str, Any]],
    at: dict[str, dict[str, Any]],
    hour1: int,
    copies: int,
    n: int,
) -> None:
    """Fail loudly where a copy or a refresh at the last hour costs other than at hour 1."""
    for w in sample:
        for c in range(copies - 2 * CYCLE + 1, copies + 1):
            same = c - CYCLE * math.ceil((c - hour1) / CYCLE)  # the copy of the same phase in hour 1
            assert 2 * CYCLE < same <= hour1
            if _without_index(w.copies[c - 1]) != _without_index(w.copies[same - 1]):
                raise AssertionError(
                    f"writer {w.rank}'s copy {c} made {said(w.copies[c - 1])}; copy {same} "
                    f"(hour 1, same phase of the compaction cycle) made {said(w.copies[same - 1])}"
                )
    first, last = at.values()
    for case in ("every", "none", "half", "rest"):
        if first[case]["requests"] != last[case]["requests"]:
            raise AssertionError(
                f"a refresh ({case} changed) made {said(first[case]['requests'])} at hour 1, "
                f"{said(last[case]['requests'])} at the last hour"
            )

    def plain(window: dict[str, float]) -> dict[str, float]:
        return {kind: count for kind, count in window.items() if kind != INDEX_PUT}

    if plain(first["copy_window"]) != plain(last["copy_window"]):
        raise AssertionError(f"requests per copy: {first['copy_window']} at hour 1, {last['copy_window']} at the end")
    # an index is written only every CYCLE segments of a file: every CYCLE**2 copies
    for w in sample:
        at_index = [c for c, requests in enumerate(w.copies[:copies], 1) if requests[INDEX_PUT]]
        if any(c % CYCLE**2 for c in at_index) or len(at_index) != copies // CYCLE**2:
            raise AssertionError(f"writer {w.rank} wrote indexes at copies {at_index}")
    # the manifest: about the same size at the last hour as at hour 1
    if last["manifest_window"]["max"] > 1.5 * first["manifest_window"]["max"]:
        raise AssertionError(
            f"the manifest: {first['manifest_window']} at hour 1, {last['manifest_window']} at the end"
        )
    # every refresh reads the log bytes copied since the last one, no more (no whole segment)
    for r in refreshes:
        if r["bytes_read"] != r["bytes_copied"]:
            raise AssertionError(f"the refresh after copy {r['copy']} read {r['bytes_read']:,} bytes of "
                                 f"{r['bytes_copied']:,} copied since the last one")  # fmt: skip
    # bytes sent: each byte about twice (a part, a segment), the manifests and indexes little more
    held = last["stored"]
    if held["bytes_sent"] > 2.1 * held["bytes_written"]:
        raise AssertionError(f"sent {held['bytes_sent']:,} bytes for {held['bytes_written']:,} written")
    # reading one writer's copy back lists as much at the last hour as at hour 1
    if first["fetch_one"]["requests"]["LIST"] != last["fetch_one"]["requests"]["LIST"]:
        raise AssertionError(f"reading one copy: {first['fetch_one']} at hour 1, {last['fetch_one']} at the end")
    # every refresh of the day whose writers each copied once costs the same, apart from the first
    # (it reads each writer's first part and `requirements.txt`'s copy is not read at all)
    steady = [r for r in refreshes[1:] if r["changed"] == n and r["copy"] <= copies]
    kinds_seen = {tuple(sorted(r["requests"].items())) for r in steady}
    if len(kinds_seen) != 1:
        raise AssertionError(f"refreshes of {n} changed writers differ over the day: {kinds_seen}")
    # as many GETs as changed writers times two (its manifest, its one new piece), one LIST
    for case in ("every", "none", "half", "rest"):
        for entry in (first[case], last[case]):
            expected = Counter({"LIST": 1, "GET": 2 * entry["changed"]})
            if +entry["requests"] != +expected:
                raise AssertionError(f"a refresh of {entry['changed']} changed writers made {said(entry['requests'])}")


def tab_at_scale(stored: Any, ranks: int, interval: float) -> dict[str, Any]:
    """The report tab of `ranks` writers, each holding the curves the reader keeps of a sample
    writer (a distinct offset each), built as rank 0's report thread builds it: size and time."""
    from flyte_wandb_elastic._report_html import Row, render_tab

    sample = [stored.writers[rank] for rank in sorted(stored.writers)]
    shown = [{name: curve.shown() for name, curve in w.curves.items()} for w in sample]
    rows = []
    for rank in range(ranks):
        w, curves = sample[rank % len(sample)], shown[rank % len(sample)]
        rows.append(
            Row(
                run_id=f"w{rank}",
                ranks=[rank],
                rows=w.rows,
                metrics=dict(w.metrics),
                state="running",
                sync=f"python -m flyte_wandb_elastic sync s3://bucket/r1/wandb/a0/rank-{rank}",
                curves={name: [(s, v + rank * 1e-6) for s, v in points] for name, points in curves.items()},
                last_time=w.last_time,
            )
        )
    started, cpu = time.perf_counter(), time.process_time()
    page = render_tab(rows, f"new / global, {ranks // 8:,} x 8 ranks", "Live, while the job runs", interval)
    return {
        "bytes": len(page.encode()),
        "build_s": time.perf_counter() - started,
        "build_cpu_s": time.process_time() - cpu,
        "points": sum(len(c) for r in rows for c in r.curves.values()),
        "rows_per_writer": sample[0].rows,
    }


def fetch_one(log: AccessLog, prefix: str, into: Path) -> dict[str, Any]:
    """Rank 0's copy read back whole as `sync --ranks 0` reads it (`find_copies`: the action's
    folder and its manifests listed, then `fetch_copies` of rank 0's: its manifest, its indexes,
    its pieces): requests and seconds."""
    import shutil

    from flyte_wandb_elastic._persist import fetch_copies, find_copies

    log.new()
    started = time.perf_counter()
    root = fetch_copies(prefix, into, [c for c in find_copies(prefix) if c.path.startswith("rank-0/")])
    seconds = time.perf_counter() - started
    requests = kinds(log.new())
    shutil.rmtree(root)
    return {"requests": requests, "s": seconds}
