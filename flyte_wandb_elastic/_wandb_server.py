"""The calls that need a W&B server: creating a sweep, and reading runs and sweeps back.

`_wandb_run` opens and finishes runs; everything else that talks to W&B is here. wandb is imported
inside each function, only when a server is really asked. What cannot work without a server
fails first, in `require_server`, with an error that says what is needed: never an empty result.

Process: the task's own process (for `@wandb_sweep` on a distributed task, the launching one).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._wandb_host import BASE_URL_ENV, wandb_server

SERVERLESS_MODES = ("offline", "disabled", "dryrun")


def require_server(what: str, mode: str | None, source: str) -> None:
    """Raise unless W&B is set to reach a server.

    Args:
        what: What needs the server, e.g. "creating the W&B sweep 'r-a0'".
        mode: The W&B mode set for the task (`wandb_config`, the decorator or the run), if any.
        source: Where `mode` comes from, for the message.

    Raises:
        RuntimeError: The mode (or, without one, `WANDB_MODE` / `WANDB_DISABLED`) is offline or disabled.
    """
    if not mode:
        if os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1"):
            mode, source = "disabled", "WANDB_DISABLED in the environment"
        else:
            mode, source = os.environ.get("WANDB_MODE"), "WANDB_MODE in the environment"
    if mode in SERVERLESS_MODES:
        raise RuntimeError(
            f"{what} needs a W&B server, but W&B is set to mode={mode!r} ({source}). "
            "Run it with mode='online' (wandb_config(mode='online') or WANDB_MODE=online), a reachable "
            "server (host) and a W&B API key (WANDB_API_KEY, e.g. through api_key_secret)."
        )


@contextmanager
def _base_url(host: str | None) -> Iterator[None]:
    """`WANDB_BASE_URL` set to `host` for the block where `host` decides the server (`_wandb_host`),
    where `wandb.sweep` reads it."""
    base_url = wandb_server(host, os.environ).base_url
    if not base_url:
        yield
        return
    saved = os.environ.get(BASE_URL_ENV)
    os.environ[BASE_URL_ENV] = base_url
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(BASE_URL_ENV, None)
        else:
            os.environ[BASE_URL_ENV] = saved


def create_sweep(
    config: dict[str, Any], project: str | None, entity: str | None, prior_runs: list[str], host: str | None
) -> str:
    """Create a W&B sweep and return its id.

    Raises:
        RuntimeError: W&B refused or could not be reached; the W&B error is the cause.
    """
    import wandb

    where = "/".join(p for p in (entity, project) if p) or "the default entity and project"
    try:
        with _base_url(host):
            return str(wandb.sweep(sweep=config, project=project, entity=entity, prior_runs=prior_runs))
    except Exception as exc:
        raise RuntimeError(
            f"creating the W&B sweep {config.get('name')!r} in {where} failed ({type(exc).__name__}: {exc}). "
            "It needs a reachable W&B server and a valid API key (WANDB_API_KEY)."
        ) from exc


def _api(host: str | None) -> Any:
    import wandb

    base_url = wandb_server(host, os.environ).base_url
    return wandb.Api(overrides={"base_url": base_url} if base_url else None)


def _fetch(kind: str, path: str, get: Any) -> Any:
    """`get()`, with W&B's errors turned into a `RuntimeError` that says what went wrong."""
    import wandb

    try:
        return get()
    except wandb.errors.AuthenticationError as exc:  # a CommError: checked first
        raise RuntimeError(
            f"authentication failed when reading the W&B {kind} {path!r}: set WANDB_API_KEY to a valid key ({exc})"
        ) from exc
    except wandb.errors.CommError as exc:
        raise RuntimeError(
            f"could not read the W&B {kind} {path!r}: it may not exist, or this key cannot see it ({exc})"
        ) from exc
    except Exception as exc:
        raise RuntimeError(f"could not read the W&B {kind} {path!r} ({type(exc).__name__}: {exc})") from exc


def download_run(run_path: str, path: str, include_history: bool, host: str | None) -> None:
    """Download a run's files into `path`, with `summary.json` and, if asked, `metrics_history.json`.

    Raises:
        RuntimeError: The run could not be read or a file not written; the W&B error is the cause.
    """
    api_run = _fetch("run", run_path, lambda: _api(host).run(run_path))
    try:
        for file in api_run.files():
            file.download(root=path, replace=True)
        summary = dict(api_run.summary)
        if summary:
            Path(path, "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        if include_history:
            history = api_run.history(pandas=False)  # a list of rows, with or without pandas
            if history:
                Path(path, "metrics_history.json").write_text(json.dumps(history, indent=2, default=str))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise RuntimeError(f"downloading the W&B run {run_path!r} to {path} failed ({error})") from exc


def sweep_run_ids(sweep_path: str, host: str | None) -> list[str]:
    """The ids of the runs of a sweep (`entity/project/sweep_id`).

    Raises:
        RuntimeError: The sweep could not be read; the W&B error is the cause.
    """
    return _fetch("sweep", sweep_path, lambda: [run.id for run in _api(host).sweep(sweep_path).runs])
