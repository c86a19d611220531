"""Which allocator Arrow's buffers (the log's strings, parquet reads) come from in a command.

Arrow's default on Linux (mimalloc) keeps much of what it frees, so a step that builds and drops
large string columns (ingest, features, train) peaks well above what it holds: on a 5M-line log
ingest peaked at 1.55 GiB with mimalloc and 1.24 GiB with jemalloc, which returns freed pages.
``ARROW_DEFAULT_MEMORY_POOL`` set by the user still wins.
"""

from __future__ import annotations

import contextlib
import os


def prefer_jemalloc() -> str:
    """Make jemalloc Arrow's default pool when this pyarrow has it and the user chose none;
    returns the pool's backend name."""
    import pyarrow as pa

    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        with contextlib.suppress(NotImplementedError):  # a pyarrow built without jemalloc keeps its default
            pa.set_memory_pool(pa.jemalloc_memory_pool())
    return str(pa.default_memory_pool().backend_name)
