"""What Linux's `/proc` says of this process: its child processes and its threads (elsewhere, none).

Process: any (the launching process's zombie watchdog, a rank's W&B services, the storage client).
"""

from __future__ import annotations

import os
from pathlib import Path


def children() -> dict[int, str]:
    """This process's child processes: each pid and its state (`Z`: exited, not collected yet)."""
    me = os.getpid()
    found: dict[int, str] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        state, ppid = stat[stat.rfind(")") + 2 :].split()[:2]  # the name may hold spaces and parentheses
        if int(ppid) == me:
            found[int(entry)] = state
    return found


def threads_named(name: str) -> list[int]:
    """The native ids of this process's threads whose name (`comm`) is `name`."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:  # no procfs
        return []
    found = []
    for task in tasks:
        try:
            if Path("/proc/self/task", task, "comm").read_text().strip() == name:
                found.append(int(task))
        except OSError:  # ended meanwhile
            continue
    return found
