"""The launching process's zombie watchdog: a deadlocked agent still ends the pod, a healthy one never does.

Real processes: a parent starts the watchdog, then two children that exit at once; it collects
them a moment later (a healthy torch elastic agent), then starts two more and never collects them
(a deadlocked one).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

PARENT = textwrap.dedent(
    """
    import subprocess, sys, time

    if sys.argv[1] == "ours":
        from flyte_wandb_elastic._zombie_watchdog import start_zombie_watchdog

        start_zombie_watchdog(nproc=2, check_interval=0.05, confirm_s=0.5)
    else:
        from flyteplugins.pytorch.task import _start_zombie_watchdog

        _start_zombie_watchdog(nproc=2, check_interval=0.05)
    children = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2)]
    time.sleep(0.3)  # both exit at once and stay zombies until collected
    for child in children:
        child.wait()
    time.sleep(1.0)
    print("healthy agent: still running", flush=True)
    deadlocked = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2)]
    time.sleep(30)
    print("deadlocked agent: still running", flush=True)
    """
)


def _parent(watchdog: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PARENT, watchdog], capture_output=True, text=True, timeout=60)


def test_a_healthy_agent_is_left_running_and_a_deadlocked_one_ended() -> None:
    result = _parent("ours")
    assert (result.returncode, result.stdout) == (1, "healthy agent: still running\n"), result.stderr
    assert "torch elastic's agent is deadlocked" in result.stderr


def test_the_plugins_watchdog_ends_the_healthy_one() -> None:
    # why the package replaces it: the same moment of uncollected workers ends the pod with 1
    result = _parent("plugin")
    assert (result.returncode, result.stdout) == (1, "")


def test_the_plugin_starts_ours_only_within_a_wandb_elastic_tasks_execute() -> None:
    from flyteplugins.pytorch import task as pytorch_task

    from flyte_wandb_elastic._zombie_watchdog import in_place_of_the_plugins, start_zombie_watchdog

    plugins = pytorch_task._start_zombie_watchdog
    with in_place_of_the_plugins():
        assert pytorch_task._start_zombie_watchdog is start_zombie_watchdog
        with in_place_of_the_plugins():  # a second task's execute in the same process
            assert pytorch_task._start_zombie_watchdog is start_zombie_watchdog
        assert pytorch_task._start_zombie_watchdog is start_zombie_watchdog
    assert pytorch_task._start_zombie_watchdog is plugins
