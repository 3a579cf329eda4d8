"""The default number of CPU threads: the physical cores this process may run on, as llama.cpp's
cpu_get_num_math() counts them (a second hyperthread of a core adds little to matrix work and, with
other processes on the machine, costs a lot: two runs on all logical cores were ~30x slower each)."""

from __future__ import annotations

import os
from pathlib import Path

SYS_CPU = Path("/sys/devices/system/cpu")


def physical_cores(sys_cpu: Path = SYS_CPU, allowed: set[int] | None = None) -> int:
    """The physical cores among the CPUs this process may use (os.sched_getaffinity): CPUs that are
    hyperthreads of one core (the same topology/thread_siblings_list) count once. Without the topology
    (not Linux, a container hiding /sys), the CPUs it may use."""
    if allowed is None:
        allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        try:
            cores.add((sys_cpu / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip())
        except OSError:
            return len(allowed) or os.cpu_count() or 1
    return len(cores) or 1
