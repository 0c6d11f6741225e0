"""One W&B service (`wandb-core`) per node, shared by the node's ranks that open runs.

Two ways, one per engine:

Elastic. Launching process: `node_service()` starts the service in a background thread, so the launch
never waits for it (importing wandb and starting the service take about half a second, while
rendezvous and the workers' own imports take seconds), and writes the service's address to a
file whose path the workers inherit. Worker process: `join_node_service()`, called only by ranks
about to open a run, waits for that file and points `WANDB_SERVICE` at the service. If the
service cannot start, the file is empty and each rank starts its own, as without this module.

Clustered. No launcher of ours runs: the pod execs torchrun, which starts the ranks' `a0`
processes. Worker process: `first_rank_service()`, called only by ranks about to open a run,
takes a lock file named for the node's torchrun agent; the first rank to take it starts a detached
service (it outlives the rank that started it and stops once no rank has been connected for a few
seconds) and writes its address beside the lock; the others read it. A service that cannot start,
or whose address no longer answers, leaves each rank to start its own.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._deadline import DEFAULT_FINISH_TIMEOUT_S, SERVICE_SHARE, run_within
from ._rank_run import lower_this_threads_priority

SERVICE_ENV = "WANDB_SERVICE"
ADDRESS_FILE_ENV = "FLYTE_WANDB_ELASTIC_SERVICE_FILE"
# How long a rank waits for the node's service before starting its own.
JOIN_TIMEOUT_S = 30.0


@contextmanager
def node_service(finish_timeout: float = DEFAULT_FINISH_TIMEOUT_S) -> Iterator[None]:
    """Run the block with a W&B service for this node's ranks (launching process).

    The service is stopped within `SERVICE_SHARE` of `finish_timeout` after the block's end,
    whatever the W&B server does (the ranks have ended their runs within the rest of the bound).
    """
    if os.environ.get(SERVICE_ENV):  # the user already shares one
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix="flyte-wandb-elastic-"))
    address_file = folder / "address"
    started: list[bool] = []

    def start() -> None:
        lower_this_threads_priority()  # the service it starts too: it must not slow the ranks' start
        try:
            from . import _wandb_run  # imports wandb: off the launch's critical path

            started.append(_wandb_run.start_node_service())
        finally:  # always answer the ranks: an empty address means "start your own"
            partial = folder / "address.partial"
            partial.write_text(os.environ.get(SERVICE_ENV, "") if started and started[0] else "")
            partial.rename(address_file)  # atomic: a rank never reads half an address

    starter = threading.Thread(target=start, name="flyte-wandb-elastic-service", daemon=True)
    os.environ[ADDRESS_FILE_ENV] = str(address_file)
    starter.start()
    exit_code = 1  # runs a killed rank left open must not end as successful
    try:
        yield
        exit_code = 0
    finally:
        os.environ.pop(ADDRESS_FILE_ENV, None)
        starter.join()
        if started and started[0]:
            from . import _wandb_run

            stop = functools.partial(_wandb_run.stop_node_service, exit_code)
            try:
                stopped = run_within(stop, SERVICE_SHARE * finish_timeout, "flyte-wandb-elastic-service-stop")
            except Exception as exc:  # the service died under the job: nothing left to stop
                _wandb_run.logger.warning("the node's W&B service was already gone (%s: %s)", type(exc).__name__, exc)
                stopped = True
            if not stopped:
                _wandb_run.logger.warning(
                    "the node's W&B service did not stop in time (finish_timeout=%g); stopping it", finish_timeout
                )
                _wandb_run.kill_own_services()
        shutil.rmtree(folder, ignore_errors=True)


def join_node_service() -> None:
    """Point this rank at its node's W&B service, once it is up (worker process)."""
    address_file = os.environ.get(ADDRESS_FILE_ENV)
    if not address_file or os.environ.get(SERVICE_ENV):
        return
    path = Path(address_file)
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not path.exists():
        if time.monotonic() > deadline:
            return
        time.sleep(0.02)
    address = path.read_text().strip()
    if address:
        os.environ[SERVICE_ENV] = address


def first_rank_service() -> None:
    """Join the node's W&B service, starting it if this is the node's first rank here (worker process)."""
    if os.environ.get(SERVICE_ENV):  # the user already shares one
        return
    # Ranks of one node share their torchrun agent (their parent) and its run id.
    job = os.environ.get("TORCHELASTIC_RUN_ID", "job").replace(os.sep, "_")
    stem = Path(tempfile.gettempdir(), f"flyte-wandb-elastic-{job}-{os.getppid()}")
    address_file = stem.with_suffix(".service")
    from . import _wandb_run

    with open(stem.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held while the first rank starts the service (under a second)
        address = address_file.read_text().strip() if address_file.exists() else None
        if address is None or (address and not _wandb_run.service_answers(address)):
            address = _wandb_run.start_detached_service() or ""
            address_file.write_text(address)  # empty: starting failed, each rank starts its own
    if address:
        os.environ[SERVICE_ENV] = address
