"""What the copies of the run files cost in storage requests, counted by a real S3 server (`moto_server`
on loopback, its own access log read back), and that readers never see a half-compacted copy.

Real W&B run files (written offline by wandb itself), copied by the copier the ranks use, read by
the readers of the report tab, `sync` and `inspect`; and one real 2 x 2 launch with `report=True`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import wandb

from flyte_wandb_elastic import _storage
from flyte_wandb_elastic._manifest import MANIFESTS, manifest_uri
from flyte_wandb_elastic._persist import (
    COMPACT_PARTS,
    DEFAULT_PERSIST_INTERVAL_S,
    PUT_BUDGET_PER_S,
    PUTS_PER_COPY,
    RunFilesCopier,
    default_persist_interval,
    fetch_copies,
    find_copies,
)
from flyte_wandb_elastic._runfiles import _HEADER, parse_records, read_run_file, read_run_files
from flyte_wandb_elastic._stored_runs import StoredRuns
from tests.conftest import launch
from tests.servers import S3Request, S3Server
from tests.test_report import parse

ROWS = 3000
# Parts per segment (and segments per index) in the tests that drive whole index cycles: the same
# code as the default COMPACT_PARTS (which the other tests use), in 16 times fewer copies.
FEW = 4


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return s3


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real offline run's `.wandb` log of `ROWS` rows, written by wandb in a process of its own."""
    tmp = tmp_path_factory.mktemp("written")
    script = (
        "import wandb\n"
        "run = wandb.init(project='p', id='grow', mode='offline')\n"
        f"for i in range({ROWS}):\n"
        "    run.log({'row': i, 'loss': 1 / (i + 1)})\n"
        "run.finish()\n"
    )
    env = {"WANDB_DIR": str(tmp), "WANDB_MODE": "offline", "PATH": str(Path(sys.executable).parent)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
    [log] = (tmp / "wandb").glob("offline-run-*/run-grow.wandb")
    return log


def _growing(written: Path, tmp: Path) -> tuple[Path, Path]:
    """An empty run directory named as `written`'s, and its log (to be grown slice by slice)."""
    run_dir = tmp / "pod" / written.parent.name
    run_dir.mkdir(parents=True)
    return run_dir, run_dir / written.name


def _requests_since(s3: S3Server, mark: int) -> list[S3Request]:
    return s3.requests()[mark:]


def _kinds(requests: list[S3Request]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in requests:
        kind = "LIST" if r.is_list else r.method
        out[kind] = out.get(kind, 0) + 1
    return out


def test_the_default_interval_keeps_a_job_within_the_put_budget() -> None:
    assert default_persist_interval(4) == DEFAULT_PERSIST_INTERVAL_S
    for world_size in (16, 1024, 8192, 65_536):
        interval = default_persist_interval(world_size)
        assert interval >= DEFAULT_PERSIST_INTERVAL_S
        assert world_size * PUTS_PER_COPY / interval <= PUT_BUDGET_PER_S + 1e-9
    assert default_persist_interval(8192) == pytest.approx(53.248)


def test_a_copy_sends_rows_every_interval_and_debug_logs_only_at_the_end(wandb_offline: Path, s3_env: S3Server) -> None:
    s3 = s3_env
    run = wandb.init(project="p", settings=wandb.Settings(x_transaction_log_flush_interval=0.2))
    run_dir = Path(run.settings.sync_dir)
    assert list(run_dir.glob("logs/debug*.log"))  # W&B writes them from the start
    copier = RunFilesCopier(run_dir, s3.uri("debug", "wandb", "a0", "rank-0"), interval_s=3600)
    puts_per_copy = []
    for batch in range(4):
        for i in range(200):
            print(f"line {batch}-{i}")  # the user's output: files/output.log
            run.log({"row": batch * 200 + i})
        time.sleep(0.6)  # a transaction-log flush
        mark = len(s3.requests())
        assert copier.copy()
        puts = [r for r in _requests_since(s3, mark) if r.method == "PUT"]
        assert not [r for r in puts if "/logs/" in r.path], [r.path for r in puts]
        puts_per_copy.append(len(puts))
    # the first copy also sends W&B's whole files (metadata, requirements, ...); then the log's
    # part, the output's where it grew, and the manifest
    assert max(puts_per_copy[1:]) <= 3, puts_per_copy
    stored = s3.list_keys("debug/wandb/a0/rank-0/")
    assert not [k for k in stored if "/logs/" in k]
    run.finish()
    assert copier.final_copy(30, synced=False)
    stored = s3.list_keys("debug/wandb/a0/rank-0/")
    assert [k for k in stored if "/logs/debug" in k]  # the end sends them
    [back] = read_run_files(fetch_copies(s3.uri("debug"), wandb_offline / "read"))
    assert [r["row"] for r in back.rows] == list(range(800)) and back.exit_code == 0


def test_requests_and_objects_do_not_grow_with_the_job(written: Path, tmp_path: Path, s3_env: S3Server) -> None:
    """A log grown over 5 x COMPACT_PARTS copies: each copy and each refresh costs the same late in
    the job as early, the copy holds a bounded number of objects besides its segments, bytes sent
    stay within twice the log, and `inspect`'s reader gets every row back, listing as much as it
    did after the first copy."""
    s3 = s3_env
    whole = written.read_bytes()
    run_dir, log = _growing(written, tmp_path)
    prefix = s3.uri("grow", "wandb", "a0")
    copier = RunFilesCopier(run_dir, f"{prefix}/rank-0", interval_s=3600)
    stored = StoredRuns(prefix)
    copies = 5 * COMPACT_PARTS
    per_copy: list[dict[str, int]] = []
    per_refresh: list[dict[str, int]] = []
    for k in range(1, copies + 1):
        log.write_bytes(whole[: len(whole) * k // copies])
        mark = len(s3.requests())
        assert copier.copy()
        per_copy.append(_kinds(_requests_since(s3, mark)))
        mark = len(s3.requests())
        stored.refresh()
        per_refresh.append(_kinds(_requests_since(s3, mark)))
        if k == 1:  # `inspect`'s reader early on (not counted above)
            mark = len(s3.requests())
            fetch_copies(s3.uri("grow"), tmp_path / "early")
            early = _kinds(_requests_since(s3, mark))
    # a copy: one part and the manifest, and at each compaction a segment (and later a delete)
    assert {c.get("PUT", 0) for c in per_copy} <= {2, 3}, per_copy
    assert all(c.get("LIST", 0) == 0 and c.get("GET", 0) == 0 for c in per_copy)
    assert sum(c.get("POST", 0) + c.get("DELETE", 0) for c in per_copy) <= copies // COMPACT_PARTS
    # a refresh: one listing, the changed manifest, and the new piece; the same at the end as at the start
    assert per_refresh[1] == per_refresh[-1] == {"LIST": 1, "GET": 2}, per_refresh
    assert max(sum(r.values()) for r in per_refresh) <= 3
    mark = len(s3.requests())
    stored.refresh()  # nothing new: the listing only
    assert _kinds(_requests_since(s3, mark)) == {"LIST": 1}
    assert stored.writers[0].rows == ROWS
    # objects held: at most COMPACT_PARTS parts (and those awaiting deletion) beside the segments
    keys = s3.list_keys("grow/wandb/a0/rank-0/")
    segments = [k for k in keys if k.rsplit("/", 1)[-1].count("-") == 1]
    parts = [k for k in keys if k.endswith(tuple("0123456789")) and k not in segments]
    assert len(segments) == copies // COMPACT_PARTS
    assert len(parts) <= 2 * COMPACT_PARTS
    assert copier.bytes_sent <= 2 * len(whole) + 2000 * copies  # data twice at most, and the manifests
    # the whole log back, by reads that do not grow with the copies made
    mark = len(s3.requests())
    [back] = read_run_files(fetch_copies(s3.uri("grow"), tmp_path / "read"))
    reads = _kinds(_requests_since(s3, mark))
    # its listings: one a level down to the action's folder (grow/, wandb/, a0/), then its manifests
    assert reads.get("LIST") == early.get("LIST") == 4, (early, reads)
    assert reads.get("GET", 0) <= 1 + len(segments) + COMPACT_PARTS, reads
    assert back.rows == read_run_file(written).rows


def test_over_many_index_cycles_manifests_refreshes_and_listings_stay_the_same(
    written: Path, tmp_path: Path, s3_env: S3Server
) -> None:
    """A log grown over 2 x FEW**2 copies and more, so that its segments go into an index
    twice: the manifest, rewritten every copy, is no bigger in the second index cycle than in the
    first but for naming its index; every refresh reads exactly the bytes written since the last
    copy (at a compaction, the new part, not the segment); `inspect`'s reader gets the file back
    from byte 0 equal to what was written, listing no more than after the first copy and never a
    copy's own objects, reading the index and then every piece; a report reader that starts over
    at the end (a restarted rank 0) reads every row through the index."""
    s3 = s3_env
    whole = written.read_bytes()
    run_dir, log = _growing(written, tmp_path)
    prefix = s3.uri("long", "wandb", "a0")
    copier = RunFilesCopier(run_dir, f"{prefix}/rank-0", interval_s=3600, compact_parts=FEW)
    stored = StoredRuns(prefix)
    cycle = FEW**2  # copies per index
    copies = 2 * cycle + 2 * FEW
    sizes: dict[int, int] = {}  # the manifest's size before each compaction (its most pieces)
    named: list[int] = []  # pieces the manifest names then
    for k in range(1, copies + 1):
        log.write_bytes(whole[: len(whole) * k // copies])
        assert copier.copy()
        mark, read = len(s3.requests()), stored.bytes_read
        stored.refresh()
        requests = _requests_since(s3, mark)
        if k > 1:
            assert _kinds(requests) == {"LIST": 1, "GET": 2}, (k, requests)
            assert stored.bytes_read - read == len(whole) * k // copies - len(whole) * (k - 1) // copies, k
        if k % FEW == FEW - 1:
            data = _storage.read_bytes(manifest_uri(copier.uri))
            assert data is not None
            sizes[k] = len(data)
            named.append(sum(len(pieces) for pieces in json.loads(data)["files"].values()))
        if k == 1:  # reading one writer's copy back, early on
            mark = len(s3.requests())
            fetch_copies(
                s3.uri("long"), tmp_path / "early", [c for c in find_copies(s3.uri("long")) if "/rank-0/" in c.path]
            )
            early = _kinds(_requests_since(s3, mark))
    # the same at the same phase of the index cycle, but for the index's name (and longer offsets)
    first, second = (max(size for k, size in sizes.items() if i * cycle < k <= (i + 1) * cycle) for i in range(2))
    assert second <= first + 150, (first, second)
    assert max(sizes[k] for k in sizes if k > 2 * cycle) <= max(sizes[k] for k in sizes if cycle < k <= cycle + 2 * FEW)
    assert max(named) <= 2 * FEW + 1, max(named)
    indexes = [k for k in s3.list_keys("long/wandb/a0/rank-0/") if "/index-" in k]
    assert len(indexes) == 1  # the one it replaced is deleted FEW copies later
    # the whole file back from byte 0
    mark = len(s3.requests())
    copy = [c for c in find_copies(s3.uri("long")) if "/rank-0/" in c.path]
    root = fetch_copies(s3.uri("long"), tmp_path / "read", copy)
    late = _requests_since(s3, mark)
    assert (root / copy[0].path / written.name).read_bytes() == whole
    assert _kinds(late)["LIST"] == early["LIST"] == 4, (early, _kinds(late))
    assert not [r for r in late if r.is_list and "/rank-0/" in r.query["prefix"][0]], late
    segments = copies // FEW
    assert _kinds(late)["GET"] <= 2 + segments + 1, _kinds(late)  # manifest, index, segments, newest part
    assert [r.path for r in late if "/index-" in r.path] == [f"/{s3.bucket}/{indexes[-1]}"]
    # a reader from the start, through the index
    mark = len(s3.requests())
    again = StoredRuns(prefix)
    again.refresh()
    assert again.writers[0].rows == stored.writers[0].rows == ROWS
    assert again.bytes_read == len(whole)
    assert _kinds(_requests_since(s3, mark)) == {"LIST": 1, "GET": 2 + segments}  # manifest, index, segments


@pytest.mark.parametrize(("parts", "cycles"), [(COMPACT_PARTS, 6), (FEW, 12)])
def test_readers_never_see_a_half_compacted_copy(
    written: Path, tmp_path: Path, s3_env: S3Server, parts: int, cycles: int
) -> None:
    """While a copier copies and compacts as fast as it can (`cycles` compactions of `parts` parts:
    with `parts` or more, its segments go into an index too), the report's reader and `inspect`'s
    read the same copy over and over: every read is whole (rows 0..n in order, never fewer than the
    last read's) and never fails."""
    s3 = s3_env
    whole = written.read_bytes()
    run_dir, log = _growing(written, tmp_path)
    prefix = s3.uri(f"race{cycles}", "wandb", "a0")
    copier = RunFilesCopier(run_dir, f"{prefix}/rank-0", interval_s=3600, compact_parts=parts)
    copies = cycles * parts
    done = threading.Event()
    errors: list[BaseException] = []
    # the rows whole in each slice: what a read begun after that slice's copy must hold at least
    ends = [end for record, end in parse_records(whole, _HEADER) if record.WhichOneof("record_type") == "history"]
    rows_in = [sum(end <= len(whole) * k // copies for end in ends) for k in range(copies + 1)]
    copied = [rows_in[1]]
    log.write_bytes(whole[: len(whole) // copies])
    assert copier.copy()

    def copy() -> None:
        try:
            for k in range(2, copies + 1):
                log.write_bytes(whole[: len(whole) * k // copies])
                assert copier.copy()
                copied.append(rows_in[k])
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    seen_report: list[int] = []
    seen_inspect: list[int] = []

    def read_report() -> None:
        stored = StoredRuns(prefix)
        try:
            while not done.is_set():
                stored.refresh()
                if 0 in stored.writers:
                    seen_report.append(stored.writers[0].rows)
            stored.refresh()
            seen_report.append(stored.writers[0].rows)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=copy)
    reader = threading.Thread(target=read_report)
    thread.start()
    reader.start()
    n = 0
    while not done.is_set() or n == 0:
        into = tmp_path / f"read-{n}"
        before = copied[-1]
        runs = read_run_files(fetch_copies(s3.uri(f"race{cycles}"), into))
        rows = [r["row"] for r in runs[0].rows] if runs else []
        assert rows == list(range(len(rows)))  # whole: no gap, no doubled row
        assert len(rows) >= before  # every row copied before the read began
        seen_inspect.append(len(rows))
        n += 1
    thread.join()
    reader.join()
    assert errors == []
    assert seen_inspect == sorted(seen_inspect) and seen_report == sorted(seen_report)
    assert seen_report[-1] == ROWS and len(seen_inspect) >= 3
    keys = s3.list_keys(f"race{cycles}/wandb/a0/rank-0/")
    assert [k for k in keys if k.rsplit("/", 1)[-1].count("-") == 1]  # it did compact meanwhile
    assert bool([k for k in keys if "/index-" in k]) == (cycles >= parts)  # and write an index
    assert [k for k in s3.list_keys(f"race{cycles}/wandb/a0/") if f"/{MANIFESTS}/" in f"/{k}"]


@pytest.mark.launch
def test_a_report_job_lists_only_the_manifests_and_copies_no_debug_log_until_the_end(
    tmp_path: Path, s3: S3Server
) -> None:
    """A real 2 x 2 job (one run per rank, offline, each node a disk of its own) with `report=True`
    and `persist_interval=1`: every listing made while it runs is one flat listing of the manifests
    folder (one per refresh, the nodes' summaries in it), each rank sends at most 3 objects per
    interval, W&B's debug logs are sent at each rank's end only, and every row is read back. Once
    both nodes' summaries are stored, a refresh reads one object per changed summary and none of
    any writer's copies, and the final tab still shows every writer's rows and end."""
    base = s3.uri("job", "r1")
    config = {"nnodes": 2, "nproc_per_node": 2, "report": True, "project": "p", "run_mode": "new",
              "persist_interval": 1.0}  # fmt: skip
    mark = len(s3.requests())
    started = time.monotonic()
    job = launch(tmp_path, config, {"steps": 60, "interval_s": 0.1}, extra_env=s3.env(), function="paced",
                 run_base_dir=base, pods=True)  # fmt: skip
    wall_s = time.monotonic() - started
    assert job.errors == [], job.logs
    during = s3.requests()[mark:]
    lists = [r for r in during if r.is_list]
    assert lists and all(r.query["prefix"] == ["job/r1/wandb/a0/manifests/"] for r in lists), lists[:3]
    assert "delimiter" not in lists[0].query  # flat: not a walk
    assert len(lists) <= wall_s + 5  # about one per second (persist_interval), with the final ones
    # each node's first rank stores its node's summary (beside the manifests, in the same listing) at
    # most once per interval, and rank 0 reads each summary once per change, at most
    node_puts = {n: [r for r in during if r.method == "PUT" and r.path.endswith(f"/manifests/node-{n}.summary.json")]
                 for n in (0, 1)}  # fmt: skip
    node_gets = {n: [r for r in during if r.method == "GET" and r.path.endswith(f"/manifests/node-{n}.summary.json")]
                 for n in (0, 1)}  # fmt: skip
    assert all(2 <= len(node_puts[n]) <= wall_s + 3 and 1 <= len(node_gets[n]) <= len(node_puts[n]) for n in (0, 1))
    # from the second refresh after both summaries were first stored on, no writer's copy is read
    both = max(during.index(node_puts[n][0]) for n in (0, 1))
    later = [i for i, r in enumerate(during) if i > both and r.is_list]
    assert len(later) >= 3, "too few refreshes after both summaries were stored"
    copies_read = [r for r in during[later[1] :] if r.method == "GET" and not r.is_list and ".summary." not in r.path]
    assert copies_read == [], copies_read[:3]
    table = parse((tmp_path / "work-0" / "outputs" / "report.html").read_text()).table()
    assert sorted(r["ranks"] for r in table) == ["0", "1", "2", "3"]
    assert all(r["steps"] == "60" and r["state"] == "finished" for r in table), table
    puts = [r for r in during if r.method == "PUT" and "/wandb/a0/rank-" in r.path]
    debug = [r for r in puts if "/logs/debug" in r.path]
    assert len(debug) == 4 * 3  # each rank's three debug logs, once, at its end
    assert len(puts) - len(debug) <= 4 * 3 * (wall_s + 2) + 4 * 10  # 3 per rank per second, and the first copy's files
    env = {**os.environ, **s3.env()}
    env = {k: v for k, v in env.items() if not k.startswith("WANDB_")}
    done = subprocess.run([sys.executable, "-m", "flyte_wandb_elastic", "inspect", base], env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(" 60 ") >= 4, done.stdout


def test_copies_without_a_manifest_and_one_writers_uri_read_back_whole(
    written: Path, tmp_path: Path, s3_env: S3Server
) -> None:
    """A copy made before manifests existed (its parts and segments only) is still read whole, and
    so is one writer's copy named by its own URI (what the report's `sync` command names)."""
    s3 = s3_env
    whole = written.read_bytes()
    run_dir, log = _growing(written, tmp_path)
    prefix = s3.uri("old", "wandb", "a0")
    copier = RunFilesCopier(run_dir, f"{prefix}/rank-0", interval_s=3600)
    copies = 2 * COMPACT_PARTS + 3
    for k in range(1, copies + 1):
        log.write_bytes(whole[: len(whole) * k // copies])
        assert copier.copy()
    truth = read_run_file(written).rows
    [by_writer] = read_run_files(fetch_copies(f"{prefix}/rank-0", tmp_path / "writer"))
    assert by_writer.rows == truth
    # as an earlier version left it: no manifest
    _storage.delete([s3.uri(key) for key in s3.list_keys(f"old/wandb/a0/{MANIFESTS}/")])
    assert not s3.list_keys(f"old/wandb/a0/{MANIFESTS}/")
    [legacy] = read_run_files(fetch_copies(s3.uri("old"), tmp_path / "legacy"))
    assert legacy.rows == truth


_PRIORITIES = """
import json, os, sys, threading
from flyte_wandb_elastic import _storage
from flyte_wandb_elastic._procfs import threads_named
from flyte_wandb_elastic._rank_run import lower_this_threads_priority

def clients():  # the nice values of the storage client's threads
    nice = set()
    for thread in threads_named(_storage.CLIENT_THREAD):
        try:
            nice.add(os.getpriority(os.PRIO_PROCESS, thread))
        except OSError:  # ended meanwhile
            pass
    return sorted(nice)

uri = sys.argv[1]
_storage.put_bytes(uri, b"x")  # from the main thread: the client's threads start at its priority
facts = {"main": os.getpriority(os.PRIO_PROCESS, 0), "first": clients()}

def refresh():  # as the report's thread does
    lower_this_threads_priority(lowest=True)
    _storage.read_many([uri])

thread = threading.Thread(target=refresh)
thread.start()
thread.join()
facts["lowered"] = clients()
_storage.read_bytes(uri)  # the main thread again
facts["after"] = clients()
print(json.dumps(facts))
"""


def test_the_storage_clients_threads_follow_a_lowered_thread_down(s3: S3Server) -> None:
    # a refresh at the lowest priority has its requests handled at that priority too, not at
    # training's by the client's own threads (real S3 requests from a process of its own)
    env = {**os.environ, **s3.env()}
    command = [sys.executable, "-c", _PRIORITIES, s3.uri("priority", "x")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["main"] < 19
    assert facts["first"] == [facts["main"]]
    assert facts["lowered"] == facts["after"] == [19]


_FOREIGN_THREAD_AT_EXIT = """
import ctypes, sys, time
from flyte_wandb_elastic import _storage

_storage.read_bytes(sys.argv[1])  # the storage client used: its threads are waited for at exit

def answer(_):  # as the client's threads run Python to hand over an answer
    time.sleep(0.3)
    print("the thread left Python", flush=True)
    return 0

callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)(answer)
thread = ctypes.c_ulong()
assert ctypes.CDLL(None).pthread_create(ctypes.byref(thread), None, callback, None) == 0
time.sleep(0.05)  # it runs Python now; the main thread ends the process
"""


def test_the_process_exits_after_a_thread_it_did_not_start_left_python(s3: S3Server) -> None:
    # the client's threads hand each answer over by running Python, and may still be at it when
    # the call has returned; should the interpreter shut down meanwhile, the thread is ended in a
    # way the client's runtime does not survive and the process aborts (SIGABRT) after its work
    # is done (seen under load). A thread of that kind (started by C, not by Python) still in
    # Python at exit finishes first.
    env = {**os.environ, **s3.env()}
    command = [sys.executable, "-c", _FOREIGN_THREAD_AT_EXIT, s3.uri("exit", "x")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "the thread left Python\n"
