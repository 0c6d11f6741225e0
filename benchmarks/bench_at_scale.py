"""The job's control plane at full size, without 8,192 processes: a scale model on real components.

Run from the repository root, in the project's virtualenv:

    python benchmarks/bench_at_scale.py                                 # 1,024 nodes x 8 ranks
    python benchmarks/bench_at_scale.py --agreement-ranks 4096,8192 --repeats 3 --json out.json
    python benchmarks/bench_at_scale.py --agreement-ranks ""            # links and W&B load only
    python benchmarks/bench_at_scale.py --agreement-ranks "" --storage-day --day-writers 16   # and a day of storage

1. Console links: for each layout (run_mode x rank_scope), a `WandbElastic` task declared at the
   size and serialized by Flyte's own serializer as `flyte.run` does: links per task, spec bytes,
   and which runs the links lead to (every run, or the runs of the nodes linked). Warnings raised
   at declaration are recorded.
2. W&B load: for each layout, what its runs ask of W&B online at the size (run creations, with
   the package's pacing; file-stream requests per second per project and per run; concurrent
   clients; runs per project), from the planner's plans, against W&B's documented limits
   (`flyte_wandb_elastic._wandb_limits`).
3. The end-of-job agreement: one real TCPStore and one client per rank (a thread each), every rank
   calling `JobEnd.returned(wait=True)` as a rank of a `new`-mode job does, beside the floor of
   the same harness: each client connects once, adds 1 to one counter (the last sets a key) and
   waits for that key. Each measurement runs in a process of its own; each rank appends its
   return time to a file as it returns, which the parent reads (the busy process is not trusted
   to report). Repeated `--repeats` times, floor and agreement alternating; the spread is shown.
4. Storage over a day (`--storage-day`, about 15 minutes on 2 cores at 16 writers): a sample of
   `--day-writers` writers, each a real run directory growing one row a second, goes through every
   copy of a 24-hour job at the job's default copy interval with the ranks' own copier, to a
   `moto_server` on loopback whose access log counts the requests; the report's own reader
   refreshes after every interval (see `benchmarks/storage_day.py`). The requests per copy and per
   refresh (every writer changed, none, half) at the last hour are asserted equal to hour 1's;
   objects per run and bytes are shown at both; the tab is built at the job's full size from the
   reader's curves at both. Then the day at full size: PUTs/s, objects, refresh requests.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LAYOUTS = [(m, s) for m in ("auto", "shared", "new") for s in ("global", "worker")]
AGREEMENT_LIMIT_S = 300.0  # a measurement still running then is stopped and counted as incomplete


# ---- 1. console links ----


def links_at_scale(nodes: int, nproc: int) -> list[dict[str, Any]]:
    import flyte

    from flyte_wandb_elastic import WandbElastic
    from tests.serialize import run_path_spec  # as `flyte.run` serializes

    rows = []
    for run_mode, scope in LAYOUTS:
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            env = flyte.TaskEnvironment(
                name=f"scale_{run_mode}_{scope}",
                plugin_config=WandbElastic(
                    nnodes=nodes, nproc_per_node=nproc, project="p", entity="e", run_mode=run_mode, rank_scope=scope
                ),
            )

            def train() -> None: ...

            task = env.task(train)
        declared_s = time.perf_counter() - started
        started = time.perf_counter()
        spec = run_path_spec(task, {})
        serialize_s = time.perf_counter() - started
        links = [(log.name, log.uri) for log in spec.task_template.metadata.log_links]
        rows.append(
            {
                "layout": f"{run_mode}/{scope}",
                "links": len(links),
                "spec_bytes": spec.ByteSize(),
                "declare_s": declared_s,
                "serialize_s": serialize_s,
                "last_link": links[-1][1] if links else "",
                "warnings": [str(w.message) for w in caught if issubclass(w.category, UserWarning)],
            }
        )
    return rows


# ---- 2. W&B load ----


def wandb_load_at_scale(nodes: int, nproc: int) -> list[dict[str, Any]]:
    from flyte_wandb_elastic import WandbOptions
    from flyte_wandb_elastic._wandb_load import limits_exceeded, wandb_load

    rows = []
    for run_mode, rank_scope in LAYOUTS:
        options = WandbOptions(run_mode=run_mode, rank_scope=rank_scope, mode="online")
        exceeded = [
            {"limit": e.limit.key, "value": e.limit.value, "reached": e.reached}
            for e in limits_exceeded(options, nodes, nproc)
        ]
        load = dataclasses.asdict(wandb_load(options, nodes, nproc))
        rows.append({"layout": f"{run_mode}/{rank_scope}", "load": load, "exceeded": exceeded})
    return rows


# ---- 3. the end-of-job agreement ----


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agree_child(kind: str, ranks: int, nproc: int, returns: Path) -> None:
    """One measurement, in this process: `ranks` threads, each a rank with a client of its own."""
    from torch.distributed import TCPStore

    from flyte_wandb_elastic._job_end import JobEnd, connect_timeout_s
    from flyte_wandb_elastic._topology import Topology

    threading.stack_size(256 * 1024)
    port = _free_port()
    master = TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    env = {"TORCHELASTIC_RUN_ID": "bench", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    start = threading.Barrier(ranks + 1)
    out = os.open(returns, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    timeout = timedelta(seconds=connect_timeout_s(ranks))

    def floor(rank: int) -> None:
        store = TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)
        if store.add("count", 1) == ranks:
            store.set("done", "1")
        store.wait(["done"], timedelta(seconds=AGREEMENT_LIMIT_S))

    def agreement(rank: int) -> None:
        JobEnd(Topology.in_job(rank, ranks // nproc, nproc), env).returned(wait=True)

    body = floor if kind == "floor" else agreement

    def rank_main(rank: int) -> None:
        start.wait()
        try:
            body(rank)
            os.write(out, f"{rank} {time.monotonic()}\n".encode())
        except Exception as exc:  # a reset connection or a timeout: this rank did not agree
            os.write(out, f"{rank} failed {type(exc).__name__}\n".encode())

    threads = [threading.Thread(target=rank_main, args=(r,), daemon=True) for r in range(ranks)]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    os.write(out, f"start {began}\n".encode())
    start.wait()
    for thread in threads:
        thread.join(timeout=max(0.0, began + AGREEMENT_LIMIT_S - time.monotonic()))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    os.write(out, f"cpu {usage.ru_utime + usage.ru_stime}\n".encode())
    del master
    os._exit(0)  # threads still waiting are abandoned


def agree_once(kind: str, ranks: int, nproc: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        returns = Path(tmp) / "returns"
        command = [sys.executable, __file__, "--_child", kind, str(ranks), str(nproc), str(returns)]
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(command, timeout=AGREEMENT_LIMIT_S + 120, check=False, capture_output=True)
        lines = returns.read_text().splitlines() if returns.exists() else []
    began = next((float(line.split()[1]) for line in lines if line.startswith("start ")), None)
    cpu = next((float(line.split()[1]) for line in lines if line.startswith("cpu ")), None)
    marks = [line.split() for line in lines]
    done = [float(parts[1]) for parts in marks if parts[0].isdigit() and parts[1] != "failed"]
    failed = sum(1 for line in lines if " failed " in line)
    complete = len(done) == ranks
    return {
        "kind": kind,
        "ranks": ranks,
        "agreed": len(done),
        "failed": failed,
        "complete": complete,
        "wall_s": (max(done) - began) if complete and began is not None else None,
        "cpu_s": cpu,
    }


def agreement_at_scale(sizes: list[int], nproc: int, repeats: int) -> list[dict[str, Any]]:
    runs = []
    for ranks in sizes:
        for repeat in range(repeats):
            for kind in ("floor", "agreement") if repeat % 2 == 0 else ("agreement", "floor"):
                result = agree_once(kind, ranks, nproc)
                runs.append(result)
                wall = f"{result['wall_s']:.1f} s" if result["wall_s"] is not None else "incomplete"
                print(f"  {ranks} ranks, {kind}: {result['agreed']}/{ranks} agreed, {wall}, cpu {result['cpu_s']}")
    return runs


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} s (min {min(values):.1f}, max {max(values):.1f}, n={len(values)})"


# ---- 4. storage over a day ----


def storage_over_a_day(ranks: int, writers: int, hours: float, row_s: float) -> dict[str, Any]:
    from benchmarks.storage_day import CYCLE, said, storage_day

    print(f"\n## Storage over a day ({writers} sample writers through every copy of {hours:g} hours)\n")
    day = storage_day(ranks, writers, hours, row_s)
    interval, copies = day["interval_s"], day["copies"]
    first, last = day["at"].values()
    names = list(day["at"])
    print(
        f"Copy interval {interval:.1f} s (the default at {ranks:,} ranks), {copies:,} copies per writer; "
        f"one row of 4 metrics every {row_s:g} s; the day's log {day['files'][next(iter(day['files']))]:,} "
        f"bytes as wandb wrote it ({', '.join(f'{k} {v:,}' for k, v in day['files'].items())}). "
        f"The day took {day['day_s']:.0f} s here. The first copies of the {writers} writers: "
        f"{day['first_copy']}.\n"
    )
    print(f"| per writer, measured on the sample | {names[0]} | {names[1]} |")
    print("|---|---|---|")

    def row(label: str, a: str, b: str) -> None:
        print(f"| {label} | {a} | {b} |")

    row(
        f"requests per copy (last {2 * CYCLE} copies: two compaction cycles)",
        said(first["copy_window"]),
        said(last["copy_window"]),
    )
    for case, label in (("every", "every writer"), ("half", "half of them"), ("none", "none")):
        row(
            f"a refresh of the sample, {label} changed ({first[case]['changed']})",
            f"{said(first[case]['requests'])}; {first[case]['s'] * 1000:.0f} ms",
            f"{said(last[case]['requests'])}; {last[case]['s'] * 1000:.0f} ms",
        )
    for key, label in (
        ("objects_per_run", "objects per run (and its manifest)"),
        ("manifest_bytes", "manifest bytes"),
    ):
        row(label, f"{first['stored'][key]:,.0f}", f"{last['stored'][key]:,.0f}")
    row(
        f"manifest bytes over the last {2 * CYCLE} copies: mean, largest",
        f"{first['manifest_window']['mean']:,.0f}, {first['manifest_window']['max']:,}",
        f"{last['manifest_window']['mean']:,.0f}, {last['manifest_window']['max']:,}",
    )
    for key in ("bytes_stored", "bytes_sent"):
        row(
            f"{key.replace('_', ' ')} / bytes written",
            f"{first['stored'][key] / first['stored']['bytes_written']:.2f}",
            f"{last['stored'][key] / last['stored']['bytes_written']:.2f}",
        )
    row(
        "rows the reader holds / rows copied",
        f"{first['stored']['rows_read']:,} / {first['stored']['rows_written']:,}",
        f"{last['stored']['rows_read']:,} / {last['stored']['rows_written']:,}",
    )
    row(
        f"the tab at {ranks:,} writers from the reader's curves: size, build (CPU)",
        _tab(first["tab"]),
        _tab(last["tab"]),
    )
    row(
        "one writer's copy read back whole (`find_copies`, `fetch_copies`, as `sync --ranks` reads)",
        f"{said(first['fetch_one']['requests'])}; {first['fetch_one']['s']:.1f} s",
        f"{said(last['fetch_one']['requests'])}; {last['fetch_one']['s']:.1f} s",
    )
    end = day["end"]
    read = day["bytes_read_per_refresh"]
    print(
        f"\nAt the end (each writer's last copy, W&B's debug logs with it): {end['objects_per_run']:,.0f} objects "
        f"per run, stored {end['bytes_stored'] / end['bytes_written']:.2f}x and sent "
        f"{end['bytes_sent'] / end['bytes_written']:.2f}x the bytes written; the reader holds "
        f"{end['rows_read']:,} of {end['rows_written']:,} rows. Bytes a refresh of every writer read over "
        f"the day: {read['min'] / writers:,.0f} to {read['max'] / writers:,.0f} per writer "
        f"(mean {read['mean'] / writers:,.0f}). Index PUTs in the day: {day['index_puts']} (one per "
        f"{CYCLE * CYCLE} copies of each appended file). Asserted: every copy of the last {2 * CYCLE} made the "
        f"requests of hour 1's copy of the same phase of the compaction cycle (an index's PUT apart); "
        f"every refresh costs 1 LIST and 2 GETs per changed writer, the same at both hours and at every "
        f"interval between, and reads exactly the log bytes copied since the last one; the manifest is at "
        f"most 1.5x its hour-1 size at the last hour; bytes sent are at most 2.1x those written; reading "
        f"one writer's copy back lists as much at both hours; the reader holds every row copied, at both "
        f"hours and at the end."
    )
    per_copy = last["copy_window"]
    puts, deletes = per_copy.get("PUT", 0.0), per_copy.get("DELETE", 0.0)
    per_hour = (last["stored"]["objects_per_run"] - first["stored"]["objects_per_run"]) / (
        (copies - day["hour1_copy"]) * interval / 3600
    )
    lists = math.ceil(ranks / 1000)
    gets = ranks * last["every"]["requests"]["GET"] / last["every"]["changed"]
    print(f"\n| at {ranks:,} ranks, a {hours:g}-hour job | |")
    print("|---|---|")
    print(f"| PUTs/s (and batched deletes/s) | {ranks * puts / interval:,.0f} ({ranks * deletes / interval:,.1f}) |")
    print(
        f"| objects per run: {names[0]}, {names[1]}, at the end | {first['stored']['objects_per_run']:,.0f}, "
        f"{last['stored']['objects_per_run']:,.0f}, {end['objects_per_run']:,.0f} "
        f"(+{per_hour:.1f} an hour: a segment per {CYCLE} copies of each appended file) |"
    )
    print(f"| objects of the whole job at the end | {ranks * end['objects_per_run']:,.0f} |")
    print(f"| a refresh, every writer changed | {lists} LIST ({ranks:,} manifests, 1,000 a page), {gets:,.0f} GET |")
    print(f"| a refresh, none changed | {lists} LIST |")
    print(f"| the tab ({ranks:,} writers): size, build (CPU) | {_tab(last['tab'])} |")
    print(
        f"| one rank's copy read back ({names[1]}), from the action's folder | {2 * lists} LIST (its folders "
        f"and its manifests, 1,000 a page), {last['fetch_one']['requests']['GET']} GET (its manifest, index, pieces) |"
    )
    print(
        "\nSeconds of a refresh at full size: `bench_refresh_at_scale.py` (8,192 writers on this S3 server); "
        "sync runs/s: `bench_sync.py`."
    )
    day.pop("refreshes")
    return day


def _tab(tab: dict[str, Any]) -> str:
    return f"{tab['bytes'] / 1024:,.0f} KiB, {tab['build_s']:.1f} s ({tab['build_cpu_s']:.1f} s)"


# ---- main ----


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1024)
    parser.add_argument("--nproc-per-node", type=int, default=8)
    parser.add_argument("--agreement-ranks", default="4096", help="comma-separated world sizes ('' to skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--storage-day", action="store_true", help="run section 4, a day of storage requests")
    parser.add_argument("--day-writers", type=int, default=16, help="sample writers taken through the day")
    parser.add_argument("--day-hours", type=float, default=24.0)
    parser.add_argument("--row-s", type=float, default=1.0, help="seconds between rows a writer logs")
    parser.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        kind, ranks, nproc, returns = args._child
        agree_child(kind, int(ranks), int(nproc), Path(returns))
        return 0

    from benchmarks.bench_elastic import machine

    nodes, nproc = args.nodes, args.nproc_per_node
    print(f"# The control plane at {nodes:,} nodes x {nproc} ranks ({nodes * nproc:,} ranks)\n")
    print("## Console links (Flyte's serializer)\n")
    print("| layout | links | spec bytes | declare | serialize | last link | warned at declaration |")
    print("|---|---|---|---|---|---|---|")
    links = links_at_scale(nodes, nproc)
    for row in links:
        warned = f"yes ({len(row['warnings'])})" if row["warnings"] else "-"
        print(
            f"| {row['layout']} | {row['links']} | {row['spec_bytes']:,} | {row['declare_s'] * 1000:.0f} ms "
            f"| {row['serialize_s'] * 1000:.0f} ms | {row['last_link']} | {warned} |"
        )
    load = wandb_load_at_scale(nodes, nproc)
    print("\n## W&B load online (the planner's plans against `_wandb_limits.TABLE`)\n")
    print("| layout | runs | writers = clients | creations/s | s to open all | file-stream/s: project, run | over |")
    print("|---|---|---|---|---|---|---|")
    for row in load:
        n = row["load"]
        over = ", ".join(f"{e['limit']} {e['reached']:,.0f} > {e['value']:,.0f}" for e in row["exceeded"]) or "-"
        print(
            f"| {row['layout']} | {n['runs']:,} | {n['clients']:,} | {n['run_creations_per_s']:g} "
            f"| {n['seconds_to_create']:.1f} | {n['file_stream_requests_per_s']:.1f}, "
            f"{n['file_stream_requests_per_s_per_run']:.2f} | {over} |"
        )
    sizes = [int(s) for s in args.agreement_ranks.split(",") if s.strip()]
    agreement: list[dict[str, Any]] = []
    if sizes:
        print(f"\n## End-of-job agreement (one TCPStore, a client per rank; {args.repeats} repeats)\n")
        agreement = agreement_at_scale(sizes, nproc, args.repeats)
        print("\n| ranks | floor | agreement | ratio of medians | incomplete runs (floor / agreement) |")
        print("|---|---|---|---|---|")
        for ranks in sizes:
            walls = {
                kind: [r["wall_s"] for r in agreement if r["ranks"] == ranks and r["kind"] == kind and r["complete"]]
                for kind in ("floor", "agreement")
            }
            incomplete = {
                kind: sum(1 for r in agreement if r["ranks"] == ranks and r["kind"] == kind and not r["complete"])
                for kind in ("floor", "agreement")
            }
            ratio = (
                f"{statistics.median(walls['agreement']) / statistics.median(walls['floor']):.2f}x"
                if walls["floor"] and walls["agreement"]
                else "-"
            )
            print(
                f"| {ranks:,} | {_spread(walls['floor'])} | {_spread(walls['agreement'])} | {ratio} "
                f"| {incomplete['floor']} / {incomplete['agreement']} |"
            )
    day: dict[str, Any] | None = None
    if args.storage_day:
        day = storage_over_a_day(nodes * nproc, args.day_writers, args.day_hours, args.row_s)
    info = machine()
    print("\nMachine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    if args.json:
        command = "python benchmarks/bench_at_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
        payload = {
            "date": time.strftime("%Y-%m-%d"),
            "command": command,
            "machine": info,
            "links": links,
            "wandb_load": load,
            "agreement": agreement,
            "storage_day": day,
        }
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"Raw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
