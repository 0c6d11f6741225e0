"""The file of calls queued while a run opens: what it keeps, and what `sync` writes again from it."""

from __future__ import annotations

import json
from pathlib import Path

from flyte_wandb_elastic._queued import QueuedCalls, its_start, read_queued, unwritten, writers_starts


def test_keeps_each_queued_call_and_how_it_ended(tmp_path: Path) -> None:
    queued = QueuedCalls(tmp_path / "wandb", {"id": "r1-a0", "label": "rank-1", "config": {"lr": object()}})
    assert queued.dir.name.startswith("flyte-queued-") and queued.dir.name.endswith("-r1-a0-rank-1")

    class Scalar:  # what numpy and torch scalars answer
        def item(self) -> float:
            return 0.5

    queued.add({"loss": Scalar(), "image": object(), "nested": {(1, 2): 1}, "xs": [Scalar(), 2]}, None, None)
    queued.add({"loss": 0.25, "bad": [object()]}, 7, False)
    assert queued.is_open
    queued.end(143, 1.0)
    assert not queued.is_open
    queued.add({"loss": 0.0}, None, None)  # after the end: not kept
    read = read_queued(queued.dir / "calls.log")
    assert read.writer["id"] == "r1-a0" and isinstance(read.writer["config"]["lr"], str)
    assert [c["log"] for c in read.calls] == [{"loss": 0.5, "nested": {"(1, 2)": 1}, "xs": [0.5, 2]}, {"loss": 0.25}]
    assert (read.calls[1]["step"], read.calls[1]["commit"]) == (7, False)
    assert (read.opened, read.ended) == (False, 143)


def test_a_torn_last_line_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / "flyte-queued-20261204_010000-r1" / "calls.log"
    path.parent.mkdir()
    lines = [json.dumps({"writer": {"id": "r1"}}), json.dumps({"log": {"x": 1}}), '{"log": {"x"']
    path.write_text("\n".join(lines))
    read = read_queued(path)
    assert [c["log"] for c in read.calls] == [{"x": 1}] and not read.opened and read.ended is None


def test_what_a_run_lacks_is_what_follows_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "flyte-queued-20261204_010000-r1" / "calls.log"
    path.parent.mkdir()
    calls = [json.dumps({"log": {"x": i}, "step": None, "commit": None}) for i in range(5)]
    path.write_text("\n".join([json.dumps({"writer": {"id": "r1"}}), *calls]) + "\n")
    queued = read_queued(path)
    assert [c["log"]["x"] for c in unwritten(queued, 0)] == [0, 1, 2, 3, 4]
    assert [c["log"]["x"] for c in unwritten(queued, 3)] == [3, 4]
    assert unwritten(queued, 9) == []
    queued.calls[0]["step"] = 10  # explicit steps cannot be matched to rows: only where none was written
    assert len(unwritten(queued, 0)) == 5 and unwritten(queued, 2) == []


def test_its_start_is_the_writers_first_run_begun_after_it(tmp_path: Path) -> None:
    path = tmp_path / "flyte-queued-20261204_010005-r1-rank-0" / "calls.log"
    path.parent.mkdir()
    path.write_text(json.dumps({"writer": {"id": "r1", "label": "rank-0"}}) + "\n")
    queued = read_queued(path)
    names = [
        "offline-run-20261204_010001-r1-rank-0",  # an earlier start
        "offline-run-20261204_010009-r1-rank-0",
        "offline-run-20261204_010006-r1-rank-1",  # another writer
        "offline-run-20261204_010007-r1-rank-0",
    ]
    dirs = [tmp_path / name for name in names]
    starts = writers_starts(queued, dirs)
    assert starts == [dirs[0], dirs[3], dirs[1]]
    assert its_start(queued, starts) == dirs[3]
    assert its_start(queued, starts[:1]) is None
    # a start begun after the writer's next file of queued calls is that one's
    assert its_start(queued, starts, until="20261204_010007") is None
