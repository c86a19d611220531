"""``endcap plugins new``: write an installable plugin package whose tests already pass."""

from __future__ import annotations

import re
from pathlib import Path

from endcap.errors import InvalidArgument

KINDS = ("candidates", "ranker", "filter", "monitor")
NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")

_COMPONENTS = {
    "candidates": '''class {cls}Config(endcap.ComponentConfig):
    recent_days: int = 30
    """Count purchases from the last ``recent_days`` of the log."""


class {cls}(endcap.CandidateGenerator):
    """Trending products: the most bought in the last days of the log. Replace with your own."""

    Config = {cls}Config
    config: {cls}Config

    def fit(self, data: endcap.TrainingData, directory: Path) -> dict[str, Any]:
        frame = data.interactions
        recent = frame[frame["timestamp"] >= frame["timestamp"].max() - np.timedelta64(self.config.recent_days, "D")]
        counts = np.bincount(recent["item_index"].to_numpy(), minlength=data.catalog.n_items).astype(np.float32)
        order = np.argsort(-counts, kind="stable")
        keep = counts[order] > 0
        np.savez(directory / "trending.npz", ids=order[keep].astype(np.int32), scores=counts[order][keep])
        return {{"recent_days": self.config.recent_days}}

    def load(self, context: endcap.ModelContext) -> None:
        with np.load(context.directory / "trending.npz") as saved:
            self.ids, self.scores = saved["ids"], saved["scores"]

    def generate(self, query: endcap.Query, user: endcap.UserFeatures, n: int) -> endcap.Candidates:
        return endcap.Candidates(self.ids[:n], self.scores[:n])
''',
    "ranker": '''class {cls}Config(endcap.ComponentConfig):
    feature: str = "source.popularity"
    """The feature whose value is the score."""


class {cls}(endcap.Ranker):
    """Scores each candidate by one feature. Replace with your own model."""

    Config = {cls}Config
    config: {cls}Config

    def score(self, query: endcap.Query, features: endcap.FeatureMatrix) -> np.ndarray:
        if self.config.feature not in features.names:
            return np.zeros(features.ids.size, dtype=np.float32)
        return features.column(self.config.feature).astype(np.float32)
''',
    "filter": '''class {cls}Config(endcap.ComponentConfig):
    item_ids: list[str] = []
    """Products never to show."""
    boosted_item_ids: list[str] = []
    """Products to move up."""
    boost: float = 1.0


class {cls}(endcap.Filter):
    """A business rule: drops some products and boosts others. Replace with your own."""

    Config = {cls}Config
    config: {cls}Config

    def load(self, context: endcap.ModelContext) -> None:
        lookup = {{item: i for i, item in enumerate(context.catalog.item_ids.tolist())}}
        self.dropped = np.array([lookup[i] for i in self.config.item_ids if i in lookup], dtype=np.int32)
        self.boosted = np.array([lookup[i] for i in self.config.boosted_item_ids if i in lookup], dtype=np.int32)

    def keep(self, query: endcap.Query, ids: np.ndarray) -> np.ndarray:
        return ~np.isin(ids, self.dropped)

    def boost(self, query: endcap.Query, ids: np.ndarray) -> np.ndarray:
        return np.where(np.isin(ids, self.boosted), self.config.boost, 0.0).astype(np.float32)
''',
    "monitor": '''class {cls}Config(endcap.ComponentConfig):
    path: str = ""
    """Append each answered request's id to this file (empty: keep counts only)."""


class {cls}(endcap.Monitor):
    """Counts requests and events and logs answered request ids to a file. Replace with your own
    (send them to your metrics system)."""

    Config = {cls}Config
    config: {cls}Config

    def __init__(self, name: str, config: {cls}Config) -> None:
        super().__init__(name, config)
        self.requests = 0
        self.events = 0

    def on_request(self, record: endcap.RequestRecord) -> None:
        self.requests += 1
        if self.config.path:
            with open(self.config.path, "a", encoding="utf-8") as log:
                log.write(f"{{record.request_id}}\\t{{len(record.item_ids)}}\\n")

    def on_events(self, events: tuple[endcap.Event, ...]) -> None:
        self.events += len(events)
''',
}

_CONTRACT = {
    "candidates": "CandidateGeneratorContract",
    "ranker": "RankerContract",
    "filter": "FilterContract",
    "monitor": "MonitorContract",
}
_SECTION = {"candidates": "candidates", "ranker": "ranker", "filter": "filters", "monitor": "monitors"}

_MODULE = '''"""endcap-{name}: {kind} plugin for Endcap."""

from __future__ import annotations

{imports}
import endcap

{component}

@endcap.hookimpl
def endcap_api_version() -> int:
    return 1


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add({cls}, type_name="{name}")
'''

_PYPROJECT = """[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "endcap-{dist}"
version = "0.1.0"
description = "{kind} plugin for Endcap"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["endcap"]

[project.entry-points.endcap]
{name} = "endcap_{name}"

[tool.setuptools]
packages = ["endcap_{name}"]
"""

_TEST = '''"""Endcap's contract for {kind} plugins, and the plugin inside a running server."""

from __future__ import annotations

{test_imports}
import endcap_{name}
from endcap.config import BUILTIN_PLUGINS
from endcap.testing import {contract}
{workspace_import}from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc


class Test{cls}({contract}):
    type_name = "{name}"
    config: dict = {{}}

    def make_plugin(self) -> object:
        return endcap_{name}


installed = any(ep.name == "{name}" for ep in entry_points(group="endcap"))


@pytest.mark.skipif(not installed, reason="install the package first: pip install -e .")
def test_served_by_a_live_endcap(endcap_server, endcap_workspace, tmp_path) -> None:
{setup}    config = {{
        "plugins": ["{name}"],  # loaded beside the built-in plugins
        "candidates": {{  # two quick sources for the test; without replace_defaults they join the defaults
            "replace_defaults": True,
            "popularity": {{"type": "popularity"}},
            "repurchase": {{"type": "repurchase"}},
        }},
        "ranker": {{"type": "linear"}},
    }}
    config{placement}
    with grpc.insecure_channel(endcap_server(config)) as channel:
        stub = pb_grpc.RecommendationServiceStub(channel)
        reply = stub.Recommend(pb.RecommendRequest(user_id="u1", k=5), timeout=10)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert "{component_entry}" in info.components  # the plugin is loaded
    items = [item.item_id for item in reply.items]
{check}
'''

_PLACEMENT = {
    "candidates": '["candidates"]["{name}"] = {{"type": "{name}"}}',
    "ranker": '["ranker"] = {{"type": "{name}"}}',
    "filter": '["filters"] = {{"{name}": {{"type": "{name}", "item_ids": catalogue[3:]}}}}',
    "monitor": '["monitors"] = {{"{name}": {{"type": "{name}", "path": str(tmp_path / "requests.log")}}}}',
}

_MODULE_IMPORTS = {
    "candidates": "from pathlib import Path\nfrom typing import Any\n\nimport numpy as np\n",
    "ranker": "from typing import Any\n\nimport numpy as np\n",
    "filter": "from typing import Any\n\nimport numpy as np\n",
    "monitor": "from typing import Any\n",
}

_TEST_IMPORTS = {
    "filter": "from importlib.metadata import entry_points\n\nimport grpc\nimport pandas as pd\nimport pytest\n",
    "monitor": "import time\nfrom importlib.metadata import entry_points\n\nimport grpc\nimport pytest\n",
}
_TEST_IMPORTS_DEFAULT = "from importlib.metadata import entry_points\n\nimport grpc\nimport pytest\n"

_SETUP = {
    "filter": """    workspace = Workspace(endcap_workspace)
    catalogue = sorted(pd.read_parquet(workspace.interactions)["item_id"].astype(str).unique())
""",
}

_CHECK = {
    "candidates": """    assert len(items) == 5
    assert any("{name}" in item.sources for item in reply.items), "no answer came from the plugin\"""",
    "ranker": """    assert len(items) == 5
    scores = [item.score for item in reply.items]
    assert scores == sorted(scores, reverse=True)""",
    "filter": """    assert items and set(items) <= set(catalogue[:3])  # everything else was dropped by the filter""",
    "monitor": """    assert len(items) == 5
    log = tmp_path / "requests.log"
    for _ in range(100):  # monitors run after the answer is sent
        if log.exists() and reply.request_id in log.read_text():
            break
        time.sleep(0.05)
    assert f"{{reply.request_id}}\\t5" in log.read_text().splitlines()""",
}

_README = """# endcap-{dist}

A {kind} plugin for [Endcap](https://pypi.org/project/endcap/).

```sh
pip install -e .          # registers the `{name}` entry point in the `endcap` group
pytest                    # Endcap's contract tests, then the plugin inside a live server
```

Enable it in the workspace's `endcap.yaml`:

```yaml
plugins: [{name}]      # loaded beside the built-in plugins
{section}:
  {name}: {{type: {name}}}   # joins the default components; `endcap config show` prints the result
```

A plugin is trusted code: it runs inside the Endcap server process.
"""


def scaffold(name: str, kind: str, directory: Path) -> Path:
    """Write ``endcap-<name>`` under ``directory``; returns the package root."""
    if not NAME.match(name):
        raise InvalidArgument(
            f"plugin name {name!r} must start with a lowercase letter and use only a-z, 0-9 and _ (at most 41)"
        )
    if kind not in KINDS:
        raise InvalidArgument(f"--kind must be one of {', '.join(KINDS)}; got {kind!r}")
    dist = name.replace("_", "-")
    root = directory / f"endcap-{dist}"
    if root.exists():
        raise InvalidArgument(f"{root} already exists; choose another --dir or name")
    cls = (
        "".join(part.capitalize() for part in name.split("_"))
        + {
            "candidates": "Candidates",
            "ranker": "Ranker",
            "filter": "Filter",
            "monitor": "Monitor",
        }[kind]
    )
    component = _COMPONENTS[kind].format(cls=cls)
    values = {
        "name": name,
        "dist": dist,
        "kind": kind,
        "cls": cls,
        "contract": _CONTRACT[kind],
        "section": _SECTION[kind],
    }
    files = {
        root / "pyproject.toml": _PYPROJECT.format(**values),
        root / "README.md": _README.format(**values),
        root / f"endcap_{name}" / "__init__.py": _MODULE.format(
            component=component, imports=_MODULE_IMPORTS[kind], **values
        ),
        root / "tests" / f"test_{name}.py": _TEST.format(
            placement=_PLACEMENT[kind].format(**values),
            check=_CHECK[kind].format(**values),
            test_imports=_TEST_IMPORTS.get(kind, _TEST_IMPORTS_DEFAULT),
            setup=_SETUP.get(kind, ""),
            component_entry=f"ranker/ranker ({name})" if kind == "ranker" else f"{_SECTION[kind]}/{name} ({name})",
            workspace_import="from endcap.workspace import Workspace\n" if kind == "filter" else "",
            **values,
        ),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
