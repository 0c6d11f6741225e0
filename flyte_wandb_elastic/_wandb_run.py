"""Opening and finishing one rank's run, and uploading stored run files (`sync`): with `_wandb_server` (sweeps,
downloads), the only modules that call `wandb`.

It is imported lazily, by ranks that open a run, so ranks that don't log never import wandb.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import wandb
from wandb import env as wandb_env
from wandb.sdk.lib import module as wandb_module
from wandb.sdk.wandb_init import _set_global_run

from ._alerts import Alert
from ._deadline import DEFAULT_FINISH_TIMEOUT_S, INIT_SHARE, WANDB_SHARE
from ._options import WandbOptions
from ._planner import RankPlan
from ._procfs import children
from ._queued import Queued
from ._rank_run import CreationSlot, service_lost
from ._runfiles import local_wandb_dir, writers_dir
from ._wandb_host import wandb_server

logger = logging.getLogger("flyte_wandb_elastic")

DEFAULT_FLUSH_INTERVAL_S = 1.0


def open_run(
    plan: RankPlan,
    options: WandbOptions,
    flyte_meta: dict[str, Any] | None,
    resuming: bool = False,
    stats: dict[str, Any] | None = None,
    copy_prefix: str | None = None,
    fresh_service: bool = False,
    slot: CreationSlot | None = None,
) -> Any:
    """Call `wandb.init` for this rank as `plan` says.

    When init fails online and `options.on_init_failure` is not `"raise"`, the rank logs offline
    instead, and a warning names the command that uploads the run later.

    Online, `wandb.init` waits for the rank's creation slot first, and `init_timeout` counts from
    it. Where the rank's end began before its slot, the run opens online only if the slot leaves
    it time within the end's bound (and `wandb.init` gets only that time), else offline at once,
    whatever `on_init_failure` says: its rows are then uploaded later, as a failed start's are.

    A resuming rank (a torch elastic restart or a Flyte retry, or any rank whose W&B directory
    holds an earlier start's files of its run) reopens its run: online with `resume="allow"`, so
    W&B continues the run's steps; offline, from the step after the last one that earlier starts
    wrote under the same W&B directory, so steps never go back.

    Args:
        plan: This rank's plan; `plan.opens_run` must be true.
        options: Resolved options (run context applied).
        flyte_meta: Recorded under the `flyte` key of the run config (`None` outside Flyte).
        resuming: Whether earlier attempts of this task may have written this run.
        stats: System-metric settings for this rank (see `system_metrics`); the user's win.
        copy_prefix: Where this rank's run files are copied in storage (see `run_files_prefix`),
            named by the fallback's warning; `None` when they are not copied.
        fresh_service: Start a W&B service of this process's own first (the run's service died).
        slot: When `wandb.init` may be called online, and for how long (`None`: now, for as long
            as `init_timeout` allows).

    Returns:
        The `wandb.Run`.

    Raises:
        Exception: `wandb.init` failed and `on_init_failure="raise"` (or it failed offline).
        GivenUp: The rank's end gave the run up while it waited for its slot.
    """
    finish_timeout = options.finish_timeout or DEFAULT_FINISH_TIMEOUT_S
    settings: dict[str, Any] = {
        # W&B flushes the transaction log every 15 s by default: a killed rank would lose its rows.
        "x_transaction_log_flush_interval": options.flush_interval or DEFAULT_FLUSH_INTERVAL_S,
        # W&B waits for ever for a lost server at the end by default; the run files keep the rest.
        "finish_timeout": WANDB_SHARE * finish_timeout,
        **(stats or {}),
    }
    # W&B's own default (90 s) would outlast the bound of the end for a run still opening then.
    settings["init_timeout"] = options.init_timeout or INIT_SHARE * finish_timeout
    kwargs: dict[str, Any] = dict(options.init_kwargs)
    # The server the console links name, by the same rule: `host`, else W&B reads WANDB_BASE_URL.
    base_url = wandb_server(options.host, os.environ).base_url
    if base_url:
        settings["base_url"] = base_url
    # An explicit mode wins over the shared-mode setting; without one, `Settings(mode="shared")`
    # would override WANDB_MODE=offline and fail for want of an API key.
    mode = options.mode or os.environ.get("WANDB_MODE") or None
    if mode:
        kwargs["mode"] = mode
    # A task called in the same process (a local run) gets its own run, not its parent's.
    kwargs.setdefault("reinit", "create_new")
    if plan.label is not None:
        settings.update(
            mode="shared",
            x_primary=plan.primary,
            x_label=plan.label,
            x_update_finish_state=plan.primary,
            # Writers that start in the same second would otherwise share an offline directory.
            x_sync_dir_suffix=plan.label,
        )
    user_settings = kwargs.pop("settings", None)
    if isinstance(user_settings, wandb.Settings):
        user_settings = user_settings.model_dump(exclude_unset=True)
    settings = {**(user_settings or {}), **settings}
    run_dirs = local_wandb_dir(kwargs.get("dir"))
    next_step = None
    if plan.run_id and not {"resume", "resume_from", "fork_from"} & kwargs.keys():
        # An earlier start on this pod counts even where torch elastic's restart count says 0 (an
        # agent restarting its ranks because a peer's failed does not count it).
        from ._runfiles import read_run_file

        earlier = _earlier_run_files(run_dirs, plan.run_id, plan.label)
        last = max((row["_step"] for path in earlier for row in read_run_file(path).rows[-1:]), default=None)
        if resuming or last is not None:
            # Not `resume_from`: `wandb sync` uploads that as a rewind, which self-managed W&B
            # servers refuse. A plain resume that goes on from the step after the last one this
            # pod wrote syncs anywhere, offline, and online even where the server had not yet
            # received the last rows of the earlier start.
            kwargs["resume"] = "allow"
            next_step = None if last is None else last + 1
    config = {**(options.config or {}), **({"flyte": flyte_meta} if flyte_meta is not None else {})}
    init_kwargs = {
        "project": options.project,
        "entity": options.entity,
        "id": plan.run_id,
        "name": options.name,
        "group": plan.group,
        "tags": options.tags,
        "notes": options.notes,
        "job_type": options.job_type,
        "config": config,
        **kwargs,
    }

    def going_on(run: Any) -> Any:
        # Offline, steps count from 0 again; online, from what reached the server. (W&B's shared
        # mode online ignores explicit steps: its writers' steps are the server's.)
        if next_step is not None and (run.offline or plan.label is None):
            run.log({}, step=next_step, commit=False)
        return run

    if fresh_service:
        _use_a_fresh_service()
    # Online, every `wandb.init` asks W&B to create a run (or a writer of one): it waits for the
    # rank's creation slot, so the job keeps within `max_run_creations_per_s`.
    left = slot.wait() if slot is not None and kwargs.get("mode") in (None, "online") else None
    if left is not None and left <= 0:
        reason = "its creation slot (max_run_creations_per_s) came too late for the end of the rank"
    else:
        if left is not None:  # the rank's end has begun: what is left of its time to open the run
            settings["init_timeout"] = min(settings["init_timeout"], left)
        started = time.time()
        try:
            return going_on(wandb.init(settings=wandb.Settings(**settings), **init_kwargs))
        except Exception as exc:
            offline_lost = kwargs.get("mode") == "offline" and service_lost(exc)  # wandb-core died: retry
            if options.on_init_failure == "raise" or (
                kwargs.get("mode") in ("offline", "disabled") and not offline_lost
            ):
                raise
            reason = f"wandb.init failed ({type(exc).__name__}: {exc})"
        # The failed attempt still holds the run id in the W&B service (the node's shared one, or
        # this process's), and left a local directory that holds nothing and was never uploaded:
        # start a service of this rank's own, without that directory.
        _use_a_fresh_service()
        if plan.run_id:  # only this writer's: a shared run's other writers on this node use the same id
            for path in run_dirs.glob(f"run-*-{plan.run_id}*"):
                mine = path.is_dir() and writers_dir(path.name, plan.run_id, plan.label)
                if mine and path.stat().st_mtime >= started - 1:
                    shutil.rmtree(path, ignore_errors=True)
    init_kwargs["mode"] = "offline"
    settings.pop("base_url", None)
    run = going_on(wandb.init(settings=wandb.Settings(**settings), **init_kwargs))
    sync_dir = run.settings.sync_dir
    upload = (
        f"python -m flyte_wandb_elastic sync {copy_prefix.rstrip('/')}/{Path(sync_dir).name}"
        if copy_prefix
        else f"wandb sync {sync_dir}"
    )
    logger.warning("%s; this rank logs offline to %s instead. Upload it later with: %s", reason, sync_dir, upload)
    return run


def run_dir(run: Any) -> str:
    """The local directory that holds everything `run` wrote (what `wandb sync` uploads)."""
    return str(run.settings.sync_dir)


def _use_a_fresh_service() -> None:
    """Let the next `wandb.init` start a W&B service of this process's own (the last one failed or died)."""
    _send_no_telemetry()
    os.environ.pop(wandb_env.SERVICE, None)
    try:
        wandb.teardown()
    except Exception as exc:  # a service that died cannot be told to stop
        logger.debug("wandb.teardown of a failed or dead service: %s", exc)


def rows_on_disk(run: Any) -> int:
    """The history rows that `run`'s transaction log holds on disk (what its service wrote)."""
    from ._runfiles import read_run_file

    path = Path(run_dir(run), f"run-{run.id}.wandb")
    return len(read_run_file(path).rows) if path.exists() else 0


# The run that was W&B's global run before each rank run took its place, restored on finish.
_previous_global: dict[int, Any] = {}
# W&B's module-level functions that `wandb.init` points at the run's methods.
_RUN_FUNCTIONS = (
    "save",
    "use_artifact",
    "log_artifact",
    "alert",
    "watch",
    "unwatch",
    "mark_preempting",
    "log_model",
    "use_model",
    "link_model",
)


def make_global(run: Any, remember: bool = True) -> None:
    """Make `run` W&B's global run (`wandb.run`, `wandb.log`, `wandb.config`, ...), as a plain init does.

    Runs are opened with `reinit="create_new"` so that a task called in the same process gets a
    run of its own; that setting leaves the globals unset, which upstream-style code needs.

    `run` may be a `RankRun` still opening: `wandb.run`, `wandb.log` and `wandb.define_metric`
    are then its own (logging is queued), and the rest wait for the run; `open_globals` points them
    at the run once it is open.
    """
    if remember:  # restore_global hands the globals back to what held them before
        _previous_global[id(run)] = wandb.run
    if isinstance(run, wandb.Run):
        _set_global_run(run)
        return
    wandb_module.set_global(
        run=run,
        log=run.log,
        define_metric=run.define_metric,
        config=_Waiting(run, "config"),
        summary=_Waiting(run, "summary"),
        **{name: _waiting_call(run, name) for name in _RUN_FUNCTIONS},
    )
    wandb.init = _init_waiting_for(run)


def open_globals(rank_run: Any, run: Any) -> None:
    """Once `rank_run` is open as `run`: point the globals that waited for it at `run` itself."""
    if wandb.run is rank_run:
        wandb_module.set_global(
            config=run.config, summary=run.summary, **{name: getattr(run, name) for name in _RUN_FUNCTIONS}
        )
    if getattr(wandb.init, "waits_for", None) is rank_run:
        wandb.init = _INIT


# W&B's own `wandb.init`: once this rank's run is open, W&B answers a plain `wandb.init()` with it.
_INIT = wandb.init


def _init_waiting_for(rank_run: Any) -> Any:
    """`wandb.init` while `rank_run` opens: a call that W&B would answer with the open run (no
    `reinit` of its own) waits for the run to open first, and so gets it, as it would a moment
    later (without the wait, W&B saw no run yet and created a second one). Where the run cannot
    open, W&B's own answer."""

    @functools.wraps(_INIT)
    def init(*args: Any, **kwargs: Any) -> Any:
        settings = kwargs.get("settings")
        reinit = kwargs.get("reinit") or getattr(settings, "reinit", None)
        ours = wandb.run is rank_run  # (its globals: not handed to another run meanwhile)
        if ours and reinit in (None, "default", "return_previous"):
            with contextlib.suppress(Exception):  # opening failed: W&B's own init decides
                rank_run.wandb_run()
        return _INIT(*args, **kwargs)

    init.waits_for = rank_run  # type: ignore[attr-defined]
    return init


def restore_global(run: Any) -> None:
    """Hand the globals back to the run that held them before `run`, if it is still open."""
    previous = _previous_global.pop(id(run), None)
    if getattr(wandb.init, "waits_for", None) is run:
        wandb.init = _INIT
    if wandb.run is run:
        wandb_module.unset_globals()
    if previous is not None and wandb.run is None and not _finished(previous):
        make_global(previous, remember=False)  # its own predecessor stays on record


def _finished(run: Any) -> bool:
    real = run.wandb_run() if not isinstance(run, wandb.Run) and run.is_open else run
    return bool(getattr(real, "_is_finished", False))


class _Waiting:
    """`wandb.config` or `wandb.summary` of a run still opening: every use waits for the run."""

    def __init__(self, run: Any, name: str) -> None:
        self._target = lambda: getattr(run.wandb_run(), name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)

    def __getitem__(self, key: Any) -> Any:
        return self._target()[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._target()[key] = value

    def __contains__(self, key: Any) -> bool:
        return key in self._target()

    def __iter__(self) -> Any:
        return iter(self._target())


def _waiting_call(run: Any, name: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(run.wandb_run(), name)(*args, **kwargs)

    return call


def _send_no_telemetry() -> None:
    """Keep W&B's own usage telemetry from waiting for the server that just failed.

    Each online `wandb.init` makes an OpenTelemetry proxy that, at process exit, first asks the
    server whether it takes telemetry, waiting up to 10 s per proxy on a server that accepts
    connections but never answers: the rank would end 20 s after its run was safe offline. The
    proxies that have not asked yet are told the answer (no), and no new ones are made.
    """
    import gc

    try:
        from wandb.analytics.opentelemetry.opentelemetry_proxy import OpenTelemetryProxy, disable

        disable()
        for obj in gc.get_objects():
            # type(), not isinstance(): the heap holds lazy modules that import on any attribute access
            if type(obj) is OpenTelemetryProxy and obj._server_supports_proxy is None:
                obj._server_supports_proxy = False
    except Exception as exc:  # telemetry only: never in the way of the fallback
        logger.debug("could not turn W&B's telemetry off: %s", exc)


def start_node_service() -> bool:
    """Start one `wandb-core` for the ranks of this node; return whether it started.

    Process: the launching process of a node. `wandb.setup()` starts the service and exports its
    address as `WANDB_SERVICE`, which workers spawned afterwards inherit: they connect to it
    instead of starting one each. The service ends with `stop_node_service` (or this process).
    """
    try:
        wandb.setup().ensure_service()
    except Exception as exc:
        logger.warning("could not start a shared wandb-core (%s); each rank starts its own", exc)
        return False
    return bool(os.environ.get(wandb_env.SERVICE))


# How long a detached node service stays up once none of the node's ranks is connected to it.
DETACHED_IDLE_TIMEOUT = "5s"


def start_detached_service() -> str | None:
    """Start a `wandb-core` that outlives this process; its address, or `None` if it did not start.

    Process: the first logging rank of a node of a clustered task. The service stops by itself
    once no process has been connected to it for `DETACHED_IDLE_TIMEOUT`, as after
    `wandb beta core start`. This process joins it like its peers, through `WANDB_SERVICE`, so it
    does not own it: its exit does not stop the service under them.
    """
    from wandb.sdk.lib.service import service_process

    try:
        process = service_process.start_detached(wandb.Settings(), idle_timeout=DETACHED_IDLE_TIMEOUT)
        return str(process.token.env_value)
    except Exception as exc:
        logger.warning("could not start a shared wandb-core (%s); each rank starts its own", exc)
        return None


def service_answers(address: str) -> bool:
    """Whether the `wandb-core` at `address` (a `WANDB_SERVICE` value) accepts connections."""
    import socket

    kind, _, where = address.partition("-")[2].partition("-")[2].partition("-")
    try:
        if kind == "unix":
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(1.0)
                sock.connect(where)
        else:
            with socket.create_connection(("localhost", int(where.rpartition("-")[2])), timeout=1.0):
                pass
    except (OSError, ValueError):
        return False
    return True


def stop_node_service(exit_code: int) -> None:
    """Stop the node's service once it has written what the ranks logged.

    Runs a killed rank left open are finished with `exit_code` (non-zero for a failed job).
    """
    wandb.teardown(exit_code)
    os.environ.pop(wandb_env.SERVICE, None)


def _earlier_run_files(run_dirs: Path, run_id: str, label: str | None) -> list[Path]:
    """The run files that earlier starts of this writer left in `run_dirs` (offline or online)."""
    suffix = f"-{run_id}-{label}" if label else f"-{run_id}"
    return [
        path
        for path in run_dirs.glob(f"*run-*{suffix}*/run-{run_id}.wandb")
        if any(writers_dir(name, run_id, label) for name in (path.parent.name, path.parent.name.rpartition("-")[0]))
    ]


def write_queued(
    queued: Queued, calls: list[dict[str, Any]], next_step: int | None, exit_code: int, into: Path
) -> Path:
    """Write `calls` of `queued` into a new offline run directory of its writer, under `into`.

    The run goes on from `next_step` (after the writer's stored rows), and ends with `exit_code`.

    Returns:
        The run directory, for `wandb sync`.
    """
    writer = queued.writer
    settings: dict[str, Any] = {"silent": True}
    if writer.get("label"):
        settings.update(
            mode="shared",
            x_primary=bool(writer.get("primary")),
            x_label=writer["label"],
            x_update_finish_state=bool(writer.get("primary")),
            x_sync_dir_suffix=writer["label"],
        )
    keys = ("id", "project", "entity", "name", "group", "job_type", "tags", "notes", "config")
    init = {key: writer.get(key) for key in keys}
    run = wandb.init(
        mode="offline", dir=into, resume="allow", reinit="create_new", settings=wandb.Settings(**settings), **init
    )
    if next_step is not None:
        run.log({}, step=next_step, commit=False)
    for call in calls:
        run.log(call["log"], step=call.get("step"), commit=call.get("commit"))
    run.finish(exit_code=exit_code)
    return Path(run.settings.sync_dir)


def finish_run(run: Any, exit_code: int, error: str | None = None, alert: Alert | None = None) -> bool:
    """Finish `run` with `exit_code` (0 for success), recording `error` in its summary if given.

    `alert`, if given, is sent first (`run.alert`): online at once, offline kept in the run files,
    from which `wandb sync` (and `python -m flyte_wandb_elastic sync`) sends it.

    Returns:
        Whether everything the run logged is on the W&B server: an online run whose upload
        finished within `finish_timeout`.
    """
    if error is not None:
        run.summary["flyte_error"] = error
    if alert is not None:
        try:
            run.alert(title=alert.title, text=alert.text, level=alert.level)
        except Exception as exc:  # the alert never stands in the way of the run's end
            logger.warning("could not send the W&B alert %r (%s)", alert.title, exc)
    run.finish(exit_code=exit_code)
    if getattr(run, "_finish_timed_out", False):
        _send_no_telemetry()  # the server is lost: its telemetry check would hold the exit too
    return not run.offline and not getattr(run, "_finish_timed_out", True)


def kill_own_services() -> None:
    """End the `wandb-core` processes this process started, at once (Linux; elsewhere nothing).

    For a finish that did not return in time: W&B's exit hook would otherwise wait for the
    service, which waits for the server. What the run logged is in its run files already.
    """
    import signal

    for pid in children():
        try:
            cmdline = Path("/proc", str(pid), "cmdline").read_bytes()
            # a detached one is the node's service (clustered): its other ranks may still use it,
            # and it stops by itself once none is connected
            if b"wandb-core" in cmdline and b"--detached" not in cmdline:
                os.kill(pid, signal.SIGKILL)
        except OSError:  # gone meanwhile
            continue
    os.environ.pop(wandb_env.SERVICE, None)
    _send_no_telemetry()


def reference_artifact(uri: str, name: str, metadata: dict[str, Any]) -> Any:
    """A W&B reference artifact of type `checkpoint` for the object(s) at `uri` (no bytes copied).

    W&B records the URI and each object's checksum (an S3 object's ETag and version, a local
    file's MD5): a directory or prefix is every object under it, listed and read here, so this
    may take a while for a large checkpoint (the caller is not the training thread).
    """
    artifact = wandb.Artifact(name, type="checkpoint", metadata=metadata)
    artifact.add_reference(uri)
    return artifact


def log_reference(run: Any, artifact: Any, aliases: list[str], used: bool = False) -> None:
    """Log a `reference_artifact` in `run`; with `used`, the run is recorded as the artifact's user
    (W&B's `useArtifact`, which lineage shows), not its producer.

    W&B's own `run.use_artifact` refuses an offline run and waits for the server; here the artifact
    is logged with W&B's `use_after_commit` flag instead (what `use_artifact` itself does with an
    artifact not yet logged): online, W&B's service records the use once the artifact is
    committed, without the caller waiting; offline, the flag is kept in the run files, and
    `wandb sync` records the use when it uploads them.
    """
    if used:
        run._log_artifact(artifact, aliases=aliases, use_after_commit=True)
    else:
        run.log_artifact(artifact, aliases=aliases)


def upload_run_files(files: list[Path], parallelism: int = 1) -> list[tuple[bool, str]]:
    """Upload W&B run files (`.wandb`) to the server of the environment, in one operation of this
    process's `wandb-core`: W&B's own sync, as `wandb beta sync` runs it (`parallelism` runs at a
    time; files of one run one after the other, by their start time). Threads may call it at once:
    each call is an operation of its own.

    wandb-core writes `<file>.synced` beside each file it read to the end without an error, even
    when the server refused some of it: its error messages say so.

    Process: wherever `sync` runs. The service is this process's (started here if need be); the
    server and key are the environment's at the time of the call (`WANDB_BASE_URL`, `WANDB_API_KEY`).

    Returns:
        wandb-core's messages, in order: whether each is an error, and its text; a message about one
        run starts with `[<entity>/<project>/<run id>] `.
    """
    from wandb.proto.wandb_sync_pb2 import ServerSyncMessage  # type: ignore[attr-defined]
    from wandb.sdk import wandb_setup

    setup = wandb_setup.singleton()
    settings = setup.settings.model_copy()
    settings.update_from_env_vars(dict(os.environ))
    service = setup.ensure_service()

    async def upload() -> Any:
        init = await service.init_sync(
            set(files),
            settings,
            cwd=None,
            live=False,
            entity="",
            project="",
            run_id="",
            job_type="",
            tag_replacements={},
        )
        operation = await init.wait_async(timeout=60)
        done = await service.sync(operation.id, parallelism=max(1, parallelism))
        return await done.wait_async(timeout=None)

    response = setup.asyncer.run(upload)
    return [(m.severity == ServerSyncMessage.SEVERITY_ERROR, m.content) for m in response.messages]
