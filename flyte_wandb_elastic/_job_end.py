"""How a job ends, agreed through torch elastic's key-value store (the agent's TCPStore).

A run ends as successful only once every rank of the job has returned.

Otherwise a rank that returns first would mark its run successful, and a peer failing a moment
later (a checkpoint write on rank 1, say) would leave a failed job with a successful run, the
shared run of `shared` mode included. Each rank whose function returns sets a key of its own in
torch elastic's own key-value store; ranks that own a run then wait for every rank's key. If a
peer fails instead, torch elastic stops the waiting ranks and their runs end as stopped (exit
code 143). Ranks without a run only set their key: they never wait.

The keys hold no restart count: after a restart, torch elastic's agents disagree on it (the
agent whose ranks failed counts the restart, an agent that restarts because a peer did does
not, and a replaced pod's agent starts again from 0), so ranks of one start would wait on keys of
different names for ever. Instead, where restarts are allowed, each rank clears its own key as it
starts (and rank 0 the recorded failure): a key set by an earlier start never counts for this one.

The first rank that fails records its error there too, so that on a clustered task, where Flyte
lets only global rank 0 write the task's error, rank 0 can report it when torchrun stops it.

Process: a worker process that torch elastic (or torchrun) started, after the user's function
returned or raised (and, where restarts are allowed, before it runs).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from typing import Any

from ._topology import Topology

logger = logging.getLogger("flyte_wandb_elastic")

# How long a rank that returned waits for the others before finishing its run anyway.
WAIT_FOR_PEERS_S = 3600


def _store(topology: Topology, timeout_s: float) -> tuple[Any, str] | None:
    """A client of the job's store and this job's key prefix, or `None` outside a job."""
    run_id, addr, port = (os.environ.get(k) for k in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"))
    if not topology.distributed or not (run_id and addr and port):
        return None
    from torch.distributed import TCPStore

    store = TCPStore(addr, int(port), is_master=False, timeout=timedelta(seconds=timeout_s))
    return store, f"flyte_wandb_elastic/{run_id}"


def report_start(topology: Topology) -> None:
    """Clear what an earlier start of this rank left, where torch elastic may restart it."""
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) <= 0:
        return  # no earlier start: nothing to clear, and no store to reach
    try:
        found = _store(topology, 5)
        if found is not None:
            store, prefix = found
            store.delete_key(f"{prefix}/returned/{topology.rank}")
            if topology.rank == 0:  # and the failure an earlier start recorded
                store.delete_key(f"{prefix}/failure")
    except RuntimeError as exc:  # the store is gone: the job is ending anyway
        logger.warning("could not clear this rank's mark of an earlier start (%s)", exc)


def report_return(topology: Topology, wait: bool) -> None:
    """Mark this rank as returned; with `wait`, block until every rank of the job has."""
    try:
        found = _store(topology, WAIT_FOR_PEERS_S)
        if found is None:
            return
        store, prefix = found
        store.set(f"{prefix}/returned/{topology.rank}", "1")
        if wait:
            store.wait([f"{prefix}/returned/{rank}" for rank in range(topology.world_size)])
    except RuntimeError as exc:  # the store is gone, or a peer still runs after an hour
        logger.warning("could not wait for every rank to return (%s); finishing this run anyway", exc)


def report_failure(topology: Topology, error: BaseException) -> None:
    """Record this rank's error as the job's first failure, unless another rank's came first."""
    try:
        found = _store(topology, 5)
        if found is None:
            return
        store, prefix = found
        failure = json.dumps({"rank": topology.rank, "type": type(error).__name__, "message": str(error)})
        store.compare_set(f"{prefix}/failure", "", failure)
    except RuntimeError as exc:  # the store is gone: torch elastic still reports this rank's exit
        logger.warning("could not record this rank's failure for its peers (%s)", exc)


def first_failure(topology: Topology) -> dict[str, Any] | None:
    """The first failure a rank of this job recorded (`rank`, `type`, `message`), or `None`."""
    try:
        found = _store(topology, 5)
        if found is None:
            return None
        store, prefix = found
        if not store.check([f"{prefix}/failure"]):
            return None
        return dict(json.loads(store.get(f"{prefix}/failure")))
    except (RuntimeError, ValueError):
        return None
