"""W&B's documented limits and the W&B client constants the load model needs: one table, each
number with its source (`TABLE`). Pure data: the planner paces run creations by it, and
`_wandb_load` measures a declared layout against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

RATES_PAGE = (
    "W&B's rate limits for Dedicated Cloud and Self-Managed servers "
    "(https://docs.wandb.ai/platform/hosting/self-managed/rate-limits)"
)
DISTRIBUTED_GUIDE = "W&B's distributed-training guide (https://docs.wandb.ai/models/track/log/distributed-training)"
RUNS_PER_PROJECT = (
    "W&B's answer to How many runs can I create per project? "
    "(https://docs.wandb.ai/support/models/articles/how-many-runs-can-i-create-per-project)"
)


@dataclass(frozen=True)
class WandbFigure:
    """One documented W&B number.

    Attributes:
        key: Its name in `TABLE` (and the `WandbLoad` attribute it bounds, for a limit).
        what: What it counts, in words.
        value: The number.
        unit: Its unit, as the warning prints it after the number.
        source: Where W&B states it.
        limit: Whether it bounds a job's load (`False`: a constant of the W&B client the load
            model uses, or a limit the declaration cannot know the load for).
    """

    key: str
    what: str
    value: float
    unit: str
    source: str
    limit: bool = True


# fmt: off
_FIGURES = (
    WandbFigure("run_creations_per_s", "run creation requests per second per project", 80, "/s", RATES_PAGE),
    WandbFigure("file_stream_requests_per_s", "file-stream requests per second per project", 500, "/s", RATES_PAGE),
    WandbFigure("file_stream_requests_per_s_per_run", "file-stream requests per second per run", 2, "/s", RATES_PAGE),
    WandbFigure(
        "file_stream_bytes_per_s", "file-stream bytes per second per project (what is logged decides it: not checked)",
        120e6, " B/s", RATES_PAGE, limit=False,
    ),
    WandbFigure(
        "clients", "concurrent client connections (the most W&B has tested, on Dedicated Cloud)", 300, "",
        DISTRIBUTED_GUIDE,
    ),
    WandbFigure("runs", "runs per project (W&B advises about 10,000 at most)", 10_000, "", RUNS_PER_PROJECT),
    WandbFigure(
        "file_stream_interval_s", "seconds between one run writer's file-stream requests (at most one each)", 15, " s",
        "wandb-core, core/internal/filestream/filestream.go: defaultTransmitInterval = 15 * time.Second (setting "
        "x_file_stream_transmit_interval; wandb 0.31.0 sent one every 15.0 s to openwandb while logging 20 rows/s); "
        "on HTTP 429 it backs off and retries",
        limit=False,
    ),
)
# fmt: on

#: W&B's documented numbers, by key. Rate limits are defaults: an operator of a Dedicated Cloud or
#: Self-Managed server can set or lift them; on W&B's multi-tenant cloud they apply per project,
#: are not published and are higher on paid plans.
TABLE: Mapping[str, WandbFigure] = {figure.key: figure for figure in _FIGURES}

DEFAULT_RUN_CREATIONS_PER_S = TABLE["run_creations_per_s"].value
FILE_STREAM_INTERVAL_S = TABLE["file_stream_interval_s"].value
