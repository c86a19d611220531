"""Import Feast without letting it switch Endcap's Prometheus metrics to multiprocess mode.

Importing ``feast`` sets ``PROMETHEUS_MULTIPROC_DIR`` (for its own Gunicorn feature server), and
``prometheus_client`` reads that variable when it is first imported to decide where every metric
value lives: in a memory-mapped file instead of memory, which makes each update several times
slower and is inherited by every child process. Import this module before Feast: it settles
``prometheus_client`` first and takes back the variables Feast set (ones you set yourself stay).
"""

from __future__ import annotations

import os

import prometheus_client  # noqa: F401  (chooses in-memory values while the variables are unset)

_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")
_before = {name: os.environ.get(name) for name in _VARIABLES}

import feast  # noqa: E402, F401

for _name, _value in _before.items():
    if _value is None:
        os.environ.pop(_name, None)
