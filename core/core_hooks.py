"""Endcap's own hook implementations, registered in every plugin manager as ``endcap.core``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from endcap.markers import hookimpl
from endcap.types import Component, TrainingData


@hookimpl(trylast=True)
def endcap_train_component(component: Component, data: TrainingData, directory: Path) -> Mapping[str, Any]:
    """Default training: the component's own ``fit``."""
    return dict(component.fit(data, directory))
