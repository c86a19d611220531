"""The pluggy marker plugins decorate their hook implementations with."""

from __future__ import annotations

import pluggy

hookimpl = pluggy.HookimplMarker("endcap")
