"""A run ends as successful only once every rank of the job has returned.

Otherwise a rank that returns first would mark its run successful, and a peer failing a moment
later (a checkpoint write on rank 1, say) would leave a failed job with a successful run, the
shared run of `shared` mode included. Each rank whose function returns adds one to a counter in
torch elastic's own key-value store; ranks that own a run then wait for the counter to reach the
world size. If a peer fails instead, torch elastic stops the waiting ranks and their runs end as
stopped (exit code 143). Ranks without a run only add to the counter: they never wait.

Process: a worker process that torch elastic started, after the user's function returned.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

from ._topology import Topology

logger = logging.getLogger("flyte_wandb_elastic")

# How long a rank that returned waits for the others before finishing its run anyway.
WAIT_FOR_PEERS_S = 3600


def report_return(topology: Topology, wait: bool) -> None:
    """Count this rank as returned; with `wait`, block until every rank of the job has."""
    run_id, addr, port = (os.environ.get(k) for k in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"))
    if not topology.distributed or not (run_id and addr and port):
        return
    from torch.distributed import TCPStore

    key = f"flyte_wandb_elastic/{run_id}/{topology.restart_count}/returned"
    try:
        store = TCPStore(addr, int(port), is_master=False, timeout=timedelta(seconds=WAIT_FOR_PEERS_S))
        if store.add(key, 1) >= topology.world_size:
            store.set(f"{key}/all", "1")
        if wait:
            store.wait([f"{key}/all"])
    except RuntimeError as exc:  # the store is gone, or a peer still runs after an hour
        logger.warning("could not wait for every rank to return (%s); finishing this run anyway", exc)
