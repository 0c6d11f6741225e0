"""How a job ends, agreed through torch elastic's key-value store (the agent's TCPStore).

A run ends as successful only once every rank of the job has returned.

Otherwise a rank that returns first would mark its run successful, and a peer failing a moment
later (a checkpoint write on rank 1, say) would leave a failed job with a successful run, the
shared run of `shared` mode included. If a peer fails instead, torch elastic stops the waiting
ranks and their runs end as stopped (exit code 143).

The agreement costs O(1) store operations per rank, so that it holds at thousands of ranks on the
one store thread that also serves torch elastic's rendezvous and barriers:

- every rank sets a key of its own (`returned/<rank>`);
- each node's first rank (local rank 0) waits for its node's keys, then sets `node/<node>`;
- global rank 0 waits for every node's key, then sets `all`;
- ranks that own a run wait for `all` alone.

Each rank talks to the store through one connection, opened once (`JobEnd`). A node's first rank
and rank 0 wait even where they own no run: a process whose function has returned costs nothing
while it waits, and torch elastic ends the node only once all its ranks have ended anyway.

The keys hold no restart count: after a restart, torch elastic's agents disagree on it (the
agent whose ranks failed counts the restart, an agent that restarts because a peer did does
not, and a replaced pod's agent starts again from 0), so ranks of one start would wait on keys of
different names for ever. A counter shared by the ranks could not be reset safely for the same
reason. Instead, where restarts are allowed, each key is cleared as its setter starts (`start`):
a rank its own, a node's first rank its node's, rank 0 `all` and the recorded failure. Every
worker of an earlier start has stopped before any of the next start runs, so a mark of an
earlier start never counts once the rank that sets it has started again.

The first rank that fails records its error there too, so that on a clustered task, where Flyte
lets only global rank 0 write the task's error, rank 0 can report it when torchrun stops it.

Process: a worker process that torch elastic (or torchrun) started, after the user's function
returned or raised (and, where restarts are allowed, before it runs).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from ._topology import Topology

logger = logging.getLogger("flyte_wandb_elastic")

# How long a rank that returned waits for the others before finishing its run anyway.
WAIT_FOR_PEERS_S = 3600
# How long a node's first rank and rank 0 wait for the ranks they gather: they must not give up
# before a slow peer returns (their waiting costs nothing, and a failure stops them).
GATHER_S = 7 * 24 * 3600


def connect_timeout_s(world_size: int) -> float:
    """How long one store request may take: more for more ranks, which may all connect at once."""
    return max(5.0, world_size / 200)


class JobEnd:
    """One rank's part in the job's end, through one connection to the job's store (opened when
    first needed, then reused).

    Args:
        topology: Where this rank sits.
        environ: The rank's environment (`TORCHELASTIC_RUN_ID`, `MASTER_ADDR`, `MASTER_PORT`).
    """

    def __init__(self, topology: Topology, environ: Mapping[str, str] = os.environ) -> None:
        self.topology = topology
        run_id, addr, port = (environ.get(k) for k in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"))
        self._where = (addr, int(port)) if topology.distributed and run_id and addr and port else None
        self._prefix = f"flyte_wandb_elastic/{run_id}"
        self._restarts = int(environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0
        self._store: Any = None

    def start(self) -> None:
        """Clear what an earlier start of this rank left, where torch elastic may restart it."""
        if not self._restarts:
            return  # no earlier start: nothing to clear, and no store to reach
        try:
            store = self._client()
            if store is None:
                return
            t = self.topology
            store.delete_key(self._key("returned", t.rank))
            if t.local_rank == 0:
                store.delete_key(self._key("node", t.node_rank))
            if t.rank == 0:
                store.delete_key(self._key("all"))
                store.delete_key(self._key("failure"))
        except RuntimeError as exc:  # the store is gone: the job is ending anyway
            logger.warning("could not clear this rank's mark of an earlier start (%s)", exc)

    def returned(self, wait: bool) -> None:
        """Mark this rank as returned; with `wait`, block until every rank of the job has."""
        try:
            store = self._client()
            if store is None:
                return
            t = self.topology
            store.set(self._key("returned", t.rank), "1")
            if t.local_rank == 0:
                first = t.node_rank * t.local_world_size
                ranks = range(first, first + t.local_world_size)
                store.wait([self._key("returned", r) for r in ranks], timedelta(seconds=GATHER_S))
                store.set(self._key("node", t.node_rank), "1")
            if t.rank == 0:
                nodes = range(t.num_nodes)
                store.wait([self._key("node", n) for n in nodes], timedelta(seconds=GATHER_S))
                store.set(self._key("all"), "1")
            elif wait:
                store.wait([self._key("all")], timedelta(seconds=WAIT_FOR_PEERS_S))
        except RuntimeError as exc:  # the store is gone, or a peer still runs after an hour
            logger.warning("could not wait for every rank to return (%s); finishing this run anyway", exc)

    def failed(self, error: BaseException) -> None:
        """Record this rank's error as the job's first failure, unless another rank's came first."""
        try:
            store = self._client()
            if store is None:
                return
            failure = json.dumps({"rank": self.topology.rank, "type": type(error).__name__, "message": str(error)})
            store.compare_set(self._key("failure"), "", failure)
        except RuntimeError as exc:  # the store is gone: torch elastic still reports this rank's exit
            logger.warning("could not record this rank's failure for its peers (%s)", exc)

    def first_failure(self) -> dict[str, Any] | None:
        """The first failure a rank of this job recorded (`rank`, `type`, `message`), or `None`."""
        try:
            store = self._client()
            if store is None or not store.check([self._key("failure")]):
                return None
            return dict(json.loads(store.get(self._key("failure"))))
        except (RuntimeError, ValueError):
            return None

    def _client(self) -> Any:
        if self._store is None and self._where is not None:
            from torch.distributed import TCPStore

            timeout = timedelta(seconds=connect_timeout_s(self.topology.world_size))
            self._store = TCPStore(*self._where, is_master=False, timeout=timeout)
        return self._store

    def _key(self, *parts: object) -> str:
        return "/".join((self._prefix, *map(str, parts)))
