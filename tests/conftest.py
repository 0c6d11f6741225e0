"""Launch helpers: real torch elastic workers on CPU, W&B offline, run files read back."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flyte_wandb_elastic._runfiles import RunFile, read_run_files
from tests.servers import S3Server, WandbServer

REPO = Path(__file__).resolve().parent.parent
LAUNCH_TIMEOUT_S = 150
# with simulated pods: how soon the platform deletes the other pods of a failed job, and their grace
DELETE_AFTER_S = 5.0
TERMINATION_GRACE_S = 30.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist with `--dist loadgroup` (the README's command), every launch runs on one
    worker, in order, while the other runs the tests that start no job: two launches at once on a
    2-core machine would only slow each other."""
    for item in items:
        if item.get_closest_marker("launch") is not None:
            item.add_marker(pytest.mark.xdist_group("launches"))


@pytest.fixture(autouse=True)
def _alone_if_exclusive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Under pytest-xdist (the README's `-n 2 --dist loadgroup`), a test marked `exclusive` runs alone.

    Those tests measure time (an end's bound, a pace, a kill timed against a copy), which a
    launch on the other worker would stretch on a 2-core machine; the rest run two at a time.
    Every test takes a shared lock, an exclusive one takes it alone; a gate held by a test
    waiting to run alone lets no new test start meanwhile, so it is never starved.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process: every test runs alone anyway
        yield
        return
    alone = request.node.get_closest_marker("exclusive") is not None
    shared = tmp_path_factory.getbasetemp().parent  # the workers' temporary directories lie in it
    with open(shared / "tests.gate", "a") as gate, open(shared / "tests.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass
class Launch:
    """What one launch left behind: per-node outcomes, run files and per-rank facts."""

    outcomes: list[dict[str, Any]]
    runs: list[RunFile]
    facts: dict[int, dict[str, Any]] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    ended_at: float = 0.0  # wall clock (time.time()) when the last node process had exited
    # pods deleted after a peer failed that still ran a rank at the end of the grace (see `_delete_pods`)
    killed_after_grace: int = 0

    @property
    def errors(self) -> list[str]:
        return [o["error"] for o in self.outcomes if "error" in o]

    def layout(self) -> list[tuple[str, str, str, bool]]:
        """(run id, group, label, primary) of every run file, sorted."""
        return sorted((r.run_id, r.group, r.label, r.primary) for r in self.runs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wandb_env(tmp: Path) -> dict[str, str]:
    """An environment for offline W&B under `tmp`, with no account and no network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        WANDB_MODE="offline",
        WANDB_DIR=str(tmp),
        WANDB_SILENT="true",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    return env


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m flyte_wandb_elastic ARGS` with `env` over a clean environment (no WANDB_*)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return subprocess.run(
        [sys.executable, "-m", "flyte_wandb_elastic", *args],
        env={**clean, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def launch(
    tmp: Path,
    config: dict[str, Any],
    inputs: dict[str, Any] | None = None,
    custom_context: dict[str, str] | None = None,
    run_name: str = "r1",
    action_name: str = "a0",
    extra_env: dict[str, str] | None = None,
    mode: str = "remote",
    task: str | None = None,
    during: Callable[[Path], None] | None = None,
    function: str = "train",
    run_base_dir: str | None = None,
    pods: bool = False,
    env_vars: dict[str, str] | None = None,
) -> Launch:
    """Run the test `train` task as Flyte pods would, one process per node, and collect results.

    `during`, if given, is called with the per-rank facts directory once the node processes are
    started (to signal a rank, say); the launch then waits for them to end. `run_base_dir` is the
    Flyte run's base directory (every node's; by default one per node under `tmp`). With `pods`,
    each node has a `WANDB_DIR` of its own, deleted after the job (and after its run files are
    read), as Kubernetes deletes a pod's disk. `env_vars` are declared on the task's environment
    (`TaskEnvironment(env_vars=...)`); each node sets the task's `env_vars` in its environment, as a
    pod's container has them.
    """
    nnodes = int(str(config.get("nnodes", 1)).split(":")[-1]) if mode == "remote" else 1
    facts_dir = tmp / "facts"
    facts_dir.mkdir(parents=True, exist_ok=True)
    env = {**wandb_env(tmp), "TEST_FACTS_DIR": str(facts_dir), **(extra_env or {})}
    if nnodes > 1:
        env["PET_RDZV_ENDPOINT"] = f"127.0.0.1:{free_port()}"
    procs = []
    started = time.monotonic()
    for node in range(nnodes):
        spec = {
            "config": config,
            "inputs": inputs or {},
            "mode": mode,
            "function": function,
            **({"task": task} if task else {}),
            "custom_context": custom_context or {},
            "run_name": run_name,
            "action_name": action_name,
            "out": str(tmp / f"node-{node}.json"),
            "work_dir": str(tmp / f"work-{node}"),
            **({"run_base_dir": run_base_dir} if run_base_dir else {}),
            **({"env_vars": env_vars} if env_vars else {}),
        }
        log = open(tmp / f"node-{node}.log", "w")  # noqa: SIM115 - closed below
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-m", "tests.launcher", json.dumps(spec)],
                    cwd=REPO,
                    env={**env, **_pod_env(tmp, node, pods)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    wall_s, ended_at, killed = _wait_for(procs, facts_dir, during, started, pods)
    outcomes = []
    for node in range(nnodes):
        out = tmp / f"node-{node}.json"
        outcomes.append(json.loads(out.read_text()) if out.exists() else _no_outcome(tmp, node, procs[node][0]))
    return _collected(tmp, nnodes, outcomes, wall_s, ended_at, pods, killed)


def _no_outcome(tmp: Path, node: int, proc: subprocess.Popen[bytes]) -> dict[str, str]:
    """A node process that ended without writing its outcome (killed, or `os._exit`): its exit code
    and the end of its log, so that a failure says why."""
    tail = (tmp / f"node-{node}.log").read_text(errors="replace").splitlines()[-8:]
    return {"error": f"node wrote no outcome (exit code {proc.returncode}); its log ends:\n" + "\n".join(tail)}


def _pod_env(tmp: Path, node: int, pods: bool) -> dict[str, str]:
    """A node's own `WANDB_DIR` (its pod's disk), when the launch simulates pods."""
    if not pods:
        return {}
    disk = tmp / f"pod-{node}"
    disk.mkdir(parents=True, exist_ok=True)
    return {"WANDB_DIR": str(disk)}


def _wait_for(
    procs: list[tuple[subprocess.Popen[bytes], Any]],
    facts_dir: Path,
    during: Callable[[Path], None] | None,
    started: float,
    pods: bool = False,
) -> tuple[float, float, int]:
    """Wait for the node processes (killing any left after the timeout); the wall time, the end,
    and how many pods had to be killed after the grace.

    With `pods`, a failed node fails the job, and the platform then deletes the job's other pods,
    as Flyte does with a failed PyTorchJob or JobSet: `DELETE_AFTER_S` after the failure, each
    remaining node process gets SIGTERM, and SIGKILL `TERMINATION_GRACE_S` later. (Otherwise a node
    whose ranks all returned waits at torch elastic's exit barrier for a peer that never comes.)
    """
    try:
        if during is not None:
            during(facts_dir)
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        failed_at: float | None = None
        killed = 0
        while any(proc.poll() is None for proc, _ in procs) and time.monotonic() < deadline:
            if pods and failed_at is None and any(proc.poll() not in (None, 0) for proc, _ in procs):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() > failed_at + DELETE_AFTER_S:
                killed = _delete_pods([proc for proc, _ in procs if proc.poll() is None])
                break
            time.sleep(0.1)
        for proc, _ in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return time.monotonic() - started, time.time(), killed


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once, as a lost node ends a pod."""
    for member in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every process started by `pid`, and by those, and so on."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    todo, tree = list(children.get(pid, [])), []
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def launched_pids(tmp: Path) -> list[int]:
    """The node processes of the launch under `tmp` (found by their log file)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) == os.getpid():  # the test itself holds the log files open too
            continue
        try:
            fds = list((proc / "fd").iterdir())
            if any(os.readlink(fd).startswith(str(tmp / "node-")) for fd in fds):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _delete_pods(procs: list[subprocess.Popen[bytes]]) -> int:
    """End node processes as Kubernetes deletes their pods: SIGTERM, then SIGKILL after the grace.

    Returns:
        How many pods still ran a rank at the end of the grace. (A launcher whose ranks have all
        ended may still wait at torch elastic's exit barrier, which SIGTERM does not interrupt:
        that is torch's, and Kubernetes' SIGKILL ends it.)
    """
    killed = 0
    for proc in procs:
        proc.terminate()
    grace_ends = time.monotonic() + TERMINATION_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, grace_ends - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed += any(_is_rank(pid) for pid in descendants(proc.pid))
            kill_tree(proc.pid)
            proc.wait()
    return killed


def _is_rank(pid: int) -> bool:
    """Whether `pid` is a live process of the job other than a W&B service (a rank, or its child)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and b"wandb-core" not in cmdline and b"wandb-symon" not in cmdline


def _collected(
    tmp: Path,
    nnodes: int,
    outcomes: list[dict[str, Any]],
    wall_s: float,
    ended_at: float,
    pods: bool = False,
    killed_after_grace: int = 0,
) -> Launch:
    """What a launch under `tmp` left behind: run files, per-rank facts and node logs.

    With `pods`, each node's run files are read from its own disk, which is then deleted.
    """
    facts = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in (tmp / "facts").glob("rank-*.json")}
    logs = [(tmp / f"node-{n}.log").read_text() for n in range(nnodes)]
    if pods:
        runs = [run for n in range(nnodes) for run in read_run_files(tmp / f"pod-{n}" / "wandb")]
        for n in range(nnodes):
            shutil.rmtree(tmp / f"pod-{n}", ignore_errors=True)
    else:
        runs = read_run_files(tmp / "wandb")
    return Launch(outcomes, runs, facts, logs, wall_s, ended_at, killed_after_grace)


def peak_wandb_cores(wandb_dir: Path, job: Callable[[], Launch]) -> tuple[int, Launch]:
    """Run `job`, counting the most `wandb-core` processes of `wandb_dir` alive at once meanwhile."""
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, len(wandb_core_processes(wandb_dir)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = job()
    finally:
        done.set()
        watcher.join()
    return peak, result


def launch_clustered(
    tmp: Path,
    config: dict[str, Any],
    inputs: dict[str, Any] | None = None,
    task: str = "train",
    custom_context: dict[str, str] | None = None,
    extra_env: dict[str, str] | None = None,
    during: Callable[[Path], None] | None = None,
    max_restarts: int = 0,
    jobset_restart_attempt: int = 0,
    rdzv_id: str = "job-1",
    run_base_dir: str | None = None,
    pods: bool = False,
) -> Launch:
    """Run a task of `tests.clustered_tasks` as a clustered task's pods do, one torchrun per node.

    Each node runs the command that Flyte's `clustered` entrypoint execs, with the environment it
    exports: `torchrun ... --no-python -- a0 ...`, and the task's `env_vars`, which a pod's container
    has (over everything else). Outcomes hold each node's exit code and, for the
    node holding global rank 0, the task's output read back from `outputs.pb`. `run_base_dir`
    and `pods` as for `launch`.
    """
    import asyncio
    import importlib

    from flyte._internal.runtime.convert import Outputs, convert_from_native_to_inputs, convert_outputs_to_native
    from flyteidl2.task import common_pb2

    nnodes = int(config.get("replicas", 1))
    facts_dir = tmp / "facts"
    facts_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **wandb_env(tmp),
        "TEST_FACTS_DIR": str(facts_dir),
        "CLUSTERED_CONFIG": json.dumps(config),
        "FLYTE_CLUSTERED_WORKER": "1",
        "NNODES": str(nnodes),
        "MASTER_ADDR": "127.0.0.1",
        "JOBSET_RESTART_ATTEMPT": str(jobset_restart_attempt),
        **(extra_env or {}),
    }
    # The inputs file, written as Flyte writes it for the pods (the run context rides along).
    saved = os.environ.get("CLUSTERED_CONFIG")
    os.environ["CLUSTERED_CONFIG"] = env["CLUSTERED_CONFIG"]
    try:
        module = importlib.reload(importlib.import_module("tests.clustered_tasks"))
    finally:
        os.environ.pop("CLUSTERED_CONFIG") if saved is None else os.environ.update(CLUSTERED_CONFIG=saved)
    interface = getattr(module, task).native_interface
    task_env_vars = getattr(module, task).env_vars or {}
    proto = asyncio.run(convert_from_native_to_inputs(interface, custom_context=custom_context, **(inputs or {})))
    (tmp / "inputs.pb").write_bytes(proto.proto_inputs.SerializeToString())
    bin_dir = Path(sys.executable).parent
    endpoint = f"127.0.0.1:{free_port()}"
    procs = []
    started = time.monotonic()
    for node in range(nnodes):
        out_dir = tmp / f"out-{node}"
        out_dir.mkdir(exist_ok=True)
        command = [
            str(bin_dir / "torchrun"),
            f"--nnodes={nnodes}",
            f"--nproc-per-node={config.get('nproc_per_node', 2)}",
            f"--node-rank={node}",
            "--rdzv-backend=c10d",
            f"--rdzv-id={rdzv_id}",
            f"--rdzv-endpoint={endpoint}",
            f"--max-restarts={max_restarts}",
            "--no-python",
            "--",
            str(bin_dir / "a0"),
            *("--inputs", str(tmp / "inputs.pb"), "--outputs-path", str(out_dir), "--version", "v1"),
            *("--run-base-dir", run_base_dir or str(tmp / "base"), "--name", "a0", "--run-name", "r1"),
            *("--project", "proj", "--domain", "dev", "--org", "o"),
            *("--resolver", "flyte._internal.resolvers.default.DefaultTaskResolver"),
            *("mod", "tests.clustered_tasks", "instance", task),
        ]
        log = open(tmp / f"node-{node}.log", "w")  # noqa: SIM115 - closed below
        node_env = {**env, "NODE_RANK": str(node), "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}
        node_env.update(_pod_env(tmp, node, pods))
        node_env.update(task_env_vars)
        procs.append((subprocess.Popen(command, cwd=REPO, env=node_env, stdout=log, stderr=subprocess.STDOUT), log))
    wall_s, ended_at, killed = _wait_for(procs, facts_dir, during, started, pods)
    outcomes: list[dict[str, Any]] = []
    for node, (proc, _) in enumerate(procs):
        outcome: dict[str, Any] = {"rc": proc.returncode}
        outputs = tmp / f"out-{node}" / "outputs.pb"
        if outputs.exists():
            proto_out = common_pb2.Outputs.FromString(outputs.read_bytes())
            outcome["result"] = asyncio.run(convert_outputs_to_native(interface, Outputs(proto_outputs=proto_out)))
        if proc.returncode != 0:
            outcome["error"] = f"node {node} exited {proc.returncode}"
        outcomes.append(outcome)
    return _collected(tmp, nnodes, outcomes, wall_s, ended_at, pods, killed)


def assert_agrees_with_wandb_reader(runs: list[RunFile]) -> None:
    """Each run file reads the same through W&B's own reader (`wandb leet inspect`, in Go) as ours:
    run id, exit code, number of steps and last metrics."""
    wandb_cli = Path(sys.executable).parent / "wandb"
    for run in runs:
        out = subprocess.run(
            [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(run.path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        theirs = json.loads(out)
        assert (theirs["run_id"], theirs["exit_code"]) == (run.run_id, run.exit_code), run.path
        assert theirs["step"] == run.rows[-1]["_step"] and len(run.rows) == run.rows[-1]["_step"] + 1, run.path
        # W&B's summary holds each metric's last value; every row here logs the same metrics
        summary = {k: v for k, v in theirs["summary"].items() if not k.startswith("_") and k != "flyte_error"}
        assert summary == pytest.approx(run.last_metrics), run.path


@pytest.fixture(scope="module")
def shared_wandb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WandbServer]:
    """One W&B-compatible server per test module, for the tests that leave it alone."""
    server = WandbServer(tmp_path_factory.mktemp("openwandb"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline W&B in this process, writing under a fresh temporary directory.

    W&B reads the environment into its process-wide state once, when it is first used: an earlier
    test of the same process (an online run, a `sync`) would leave its server and directory there.
    That state is torn down first, so this test's W&B starts from this environment, as a process
    of its own would.
    """
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    for key, value in wandb_env(tmp_path).items():
        if key.startswith("WANDB_"):
            monkeypatch.setenv(key, value)
    return tmp_path


def wait_for_facts(facts_dir: Path, rank: int, timeout_s: float = 60.0) -> dict[str, Any]:
    """The facts a rank recorded at the start of its function, once it has."""
    path = facts_dir / f"rank-{rank}.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return json.loads(path.read_text())
        time.sleep(0.1)
    raise TimeoutError(f"rank {rank} recorded no facts within {timeout_s} s")


def wandb_core_processes(wandb_dir: Path) -> list[int]:
    """Live `wandb-core` services that belong to runs under `wandb_dir` (by their environment).

    A child of a service is not one: between fork and exec, the system monitor that wandb-core
    starts (`wandb-symon`) still reads as wandb-core.
    """
    found: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
            state, ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if b"wandb-core" in cmdline and f"WANDB_DIR={wandb_dir}".encode() in environ and state != "Z":
            found[int(proc.name)] = int(ppid)
    return [pid for pid, ppid in found.items() if ppid not in found]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3-compatible server (moto) on loopback, shared by a module's tests."""
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def wandb_server(tmp_path: Path) -> Iterator[WandbServer]:
    """A W&B server of this test's own, which the test may kill."""
    server = WandbServer(tmp_path / "openwandb")
    server.start()
    yield server
    server.stop()
