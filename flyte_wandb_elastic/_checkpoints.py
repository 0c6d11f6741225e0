"""Checkpoints with lineage: the primary rank records in W&B which checkpoint a run wrote and which one
a start loaded, as W&B reference artifacts (the object store keeps the bytes; W&B records the URI
and each object's checksum).

Process: a rank's own process, from the user's function. Only global rank 0 records anything (a
sharded checkpoint is one directory, logged once); on every other rank the helpers do nothing.
The call returns at once: the checkpoint's objects are listed and their checksums read on a thread
of their own (`_Recorder`), and the record is then queued, in order with the rank's `log` calls,
until the run is open. The rank's end waits for pending records before it finishes the run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._flyte_console import FlyteAction
from ._hooks import get_wandb_run
from ._topology import Topology

logger = logging.getLogger("flyte_wandb_elastic")

MAX_NAME_CHARS = 128
"""W&B's limit on an artifact's name."""


def log_checkpoint(
    location: Any,
    aliases: Sequence[str] = ("latest",),
    name: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Record a checkpoint this run wrote, as a W&B reference artifact of type `checkpoint`.

    Call it on every rank after the checkpoint is written: global rank 0 records it in its run
    (the job's primary run), the others do nothing. No bytes are copied: W&B records the URI and
    each object's checksum (every object under a directory or prefix), and W&B's lineage shows
    this run as the artifact's producer. Logging the same location again with new contents
    makes a new version of the same artifact.

    Args:
        location: Where the checkpoint is: a URI (`s3://bucket/ckpt/step-100`, `gs://...`, ...), a
            local path, a `flyte.io.File` or `flyte.io.Dir`, a `flyte.Checkpoint` (its
            `remote_destination`) or `flyte.models.CheckpointPaths` (its `checkpoint_path`).
        aliases: W&B aliases for this version (default `("latest",)`).
        name: The artifact's name; default: one made from the location, so that a later start
            that loads the same location finds the same artifact.
        metadata: More metadata for the artifact (the URI and the Flyte action are always in it).

    Raises:
        ValueError: `location` is none of the above, or `aliases` is not a list of strings.
    """
    _record(_where(location, produced=True), aliases, name, metadata, used=False)


def use_checkpoint(
    location: Any,
    name: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Record that this start loaded a checkpoint, so W&B's lineage shows which one it resumed from.

    Call it on every rank after loading: global rank 0 records the use in its run (W&B's
    `useArtifact`), the others do nothing. The artifact is the one `log_checkpoint` logged for
    the same location and contents (the same name by default), or a new reference artifact
    where none was.

    Args:
        location: As for `log_checkpoint`; a `flyte.Checkpoint` means its `remote_source` and
            `flyte.models.CheckpointPaths` its `prev_checkpoint_path` (the checkpoint a retry
            starts from). Where that is unset (a first attempt), nothing is recorded.
        name: The artifact's name (default: as `log_checkpoint` names it).
        metadata: More metadata for the artifact.

    Raises:
        ValueError: `location` is none of the accepted kinds.
    """
    _record(_where(location, produced=False), (), name, metadata, used=True)


def checkpoint_name(uri: str) -> str:
    """The default artifact name of a checkpoint location: the URI without its scheme, in W&B's
    allowed characters, shortened (with a hash of the whole) to W&B's 128 characters."""
    bare = re.sub(r"^[a-z0-9+.-]+://", "", uri.rstrip("/"))
    name = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9._-]", "-", bare)).strip("-.") or "checkpoint"
    if len(name) > MAX_NAME_CHARS:
        digest = hashlib.blake2b(uri.encode(), digest_size=6).hexdigest()
        name = f"{name[-(MAX_NAME_CHARS - len(digest) - 1) :].lstrip('-.')}-{digest}"
    return name


def _where(location: Any, produced: bool) -> str | None:
    """The URI of `location`, or `None` where a checkpoint helper holds no such location."""
    if isinstance(location, (str, os.PathLike)):
        text = os.fspath(location)
    elif hasattr(location, "remote_destination"):  # flyte.Checkpoint
        text = location.remote_destination if produced else location.remote_source
    elif hasattr(location, "checkpoint_path") and hasattr(location, "prev_checkpoint_path"):  # CheckpointPaths
        text = location.checkpoint_path if produced else location.prev_checkpoint_path
    elif isinstance(getattr(location, "path", None), str):  # flyte.io.File, flyte.io.Dir
        text = location.path
    else:
        raise ValueError(
            f"location={location!r} is not valid: expected a URI or local path (str or os.PathLike), a "
            "flyte.io.File or flyte.io.Dir, a flyte.Checkpoint or flyte.models.CheckpointPaths."
        )
    if not isinstance(text, str) or not text.strip():
        return None
    text = text.strip()
    return text if "://" in text else Path(text).resolve().as_uri()


def _record(
    uri: str | None, aliases: Sequence[str], name: str | None, metadata: dict[str, Any] | None, used: bool
) -> None:
    if isinstance(aliases, str) or not all(isinstance(a, str) and a for a in aliases):
        raise ValueError(f"aliases={aliases!r} is not valid: expected a list of non-empty strings.")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"name={name!r} is not valid: expected a non-empty string or None.")
    run = get_wandb_run()
    if uri is None or run is None or Topology.from_env(os.environ).rank != 0:
        return
    meta = {**(metadata or {}), "uri": uri, "flyte": _flyte_action()}
    artifact_name = name or checkpoint_name(uri)

    def record() -> None:
        from . import _wandb_run

        artifact = _wandb_run.reference_artifact(uri, artifact_name, meta)  # lists and checksums the objects

        def log(wandb_run: Any) -> None:
            _wandb_run.log_reference(wandb_run, artifact, list(aliases), used=used)

        when_open = getattr(run, "when_open", None)
        if when_open is None:  # blocking_init=True: the wandb.Run itself
            log(run)
        elif run.is_open:  # not under the rank run's lock: W&B asks its server first, and `log` goes on
            opened = run.wandb_run()
            if opened is not None:
                log(opened)
        else:  # queued with the rank's other calls while the run opens
            when_open(log)

    _RECORDER.submit(record, uri)


class _Recorder:
    """Checkpoint records, made in order on a daemon thread of their own: listing and reading the
    checksum of every object of a checkpoint (W&B's reference does) never holds the caller, nor the
    rank's `log` calls. The rank's end waits for them (`wait`) before it finishes the run."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], str]] = queue.SimpleQueue()
        self._pending = 0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None], uri: str) -> None:
        with self._changed:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="flyte-wandb-checkpoints", daemon=True)
                self._thread.start()
        self._jobs.put((job, uri))

    def wait(self, timeout_s: float) -> bool:
        """Wait at most `timeout_s` for every checkpoint submitted so far to be recorded (or queued
        in its run); whether they were."""
        with self._changed:
            return self._changed.wait_for(lambda: self._pending == 0, timeout=max(0.0, timeout_s))

    def _work(self) -> None:
        while True:
            job, uri = self._jobs.get()
            try:
                job()
            except Exception as exc:  # a checkpoint W&B or the storage cannot reach never stops training
                logger.warning("could not record checkpoint %s in W&B (%s)", uri, exc)
            finally:
                with self._changed:
                    self._pending -= 1
                    self._changed.notify_all()


_RECORDER = _Recorder()


def wait_for_checkpoints(timeout_s: float) -> bool:
    """Wait at most `timeout_s` for the checkpoints this process logged to reach their run's calls."""
    return _RECORDER.wait(timeout_s)


def _flyte_action() -> dict[str, Any] | None:
    """The Flyte action this rank runs in, with its console URL where known; `None` outside Flyte."""
    import flyte

    ctx = flyte.ctx()
    action = ctx.action if ctx else None
    if action is None:
        return None
    found = FlyteAction.of(os.environ, action.project or "", action.domain or "", action.run_name or "", action.name)
    return {
        "project": found.project,
        "domain": found.domain,
        "run_name": found.run_name,
        "action_name": found.action_name,
        "console_url": found.url,
    }
