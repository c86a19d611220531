"""``endcap serve --pin-cpus``: each server process kept on a core of its own."""

from __future__ import annotations

import os

from endcap.errors import EndcapError


def worker_cpus(processes: int) -> list[int]:
    """The core each of ``processes`` workers is pinned to: the CPUs this process may use, in
    order, taken in turn. A worker that stays on one core keeps its caches warm between requests
    instead of following the scheduler from core to core."""
    if not hasattr(os, "sched_setaffinity"):
        raise EndcapError("--pin-cpus needs Linux (os.sched_setaffinity); serve without it")
    allowed = sorted(os.sched_getaffinity(0))
    return [allowed[i % len(allowed)] for i in range(processes)]


def pin_to(cpu: int) -> None:
    """Keep this process on one core: the threads it has (native libraries start some at import)
    and, as they inherit it, every thread it starts from now on."""
    for thread in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(thread), {cpu})
        except ProcessLookupError:  # ended since it was listed
            continue
