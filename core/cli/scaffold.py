"""``endcap plugins new``: write an installable plugin package whose tests already pass."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from endcap.errors import InvalidArgument

KINDS = ("candidates", "ranker", "filter", "features", "monitor")
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
    "features": '''class {cls}Config(endcap.ComponentConfig):
    pass


class {cls}(endcap.FeatureProvider):
    """``{type_name}.bought_before``: 1 when the user bought the candidate before. Replace with your
    own columns; name Feast product features in ``product_references()`` to receive them."""

    Config = {cls}Config

    def names(self) -> tuple[str, ...]:
        return ("{type_name}.bought_before",)

    def compute(
        self, query: endcap.Query, user: endcap.UserFeatures, ids: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        return np.isin(ids, user.items).astype(np.float32)[:, None]
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

_CLASS_SUFFIX = {
    "candidates": "Candidates",
    "ranker": "Ranker",
    "filter": "Filter",
    "features": "Features",
    "monitor": "Monitor",
}

_CONTRACT = {
    "candidates": "CandidateGeneratorContract",
    "ranker": "RankerContract",
    "filter": "FilterContract",
    "features": "FeatureProviderContract",
    "monitor": "MonitorContract",
}
_SECTION = {
    "candidates": "candidates",
    "ranker": "ranker",
    "filter": "filters",
    "features": "features",
    "monitor": "monitors",
}

_MODULE = '''"""endcap-{name}: {kinds} plugin for Endcap."""

from __future__ import annotations

{imports}
import endcap

{components}
@endcap.hookimpl
def endcap_api_version() -> int:
    return 1


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
{registrations}'''

_PYPROJECT = """[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "endcap-{dist}"
version = "0.1.0"
description = "{kinds} plugin for Endcap"
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
from endcap.testing import {contract}
{workspace_import}from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc


class Test{cls}({contract}):
    type_name = "{type_name}"
{contract_settings}

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
    "candidates": '["candidates"]["{type_name}"] = {{"type": "{type_name}"}}',
    "ranker": '["ranker"] = {{"type": "{type_name}"}}',
    "filter": '["filters"] = {{"{type_name}": {{"type": "{type_name}", "item_ids": catalogue[3:]}}}}',
    "features": '["features"] = {{"{type_name}": {{"type": "{type_name}"}}}}',
    "monitor": '["monitors"] = {{"{type_name}": {{"type": "{type_name}", "path": str(tmp_path / "requests.log")}}}}',
}

_MODULE_IMPORTS = {
    "candidates": "from pathlib import Path\nfrom typing import Any\n\nimport numpy as np\n",
    "ranker": "from typing import Any\n\nimport numpy as np\n",
    "filter": "from typing import Any\n\nimport numpy as np\n",
    "features": "from typing import Any\n\nimport numpy as np\n",
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

_CONTRACT_SETTINGS = {
    "filter": (
        '    config: dict = {"item_ids": ["i1", "i2"]}\n'
        '    expected_dropped = ["i1", "i2"]  # checked: dropped, the rest kept'
    ),
}

_CHECK = {
    "features": """    assert len(items) == 5""",
    "candidates": """    assert len(items) == 5
    assert any("{type_name}" in item.sources for item in reply.items), "no answer came from the plugin\"""",
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

A {kinds} plugin for [Endcap](https://pypi.org/project/endcap/).

```sh
pip install -e .          # registers the `{name}` entry point in the `endcap` group
pytest                    # Endcap's contract tests, then the plugin inside a live server
```

Enable it in the workspace's `endcap.yaml`:

```yaml
plugins: [{name}]      # loaded beside the built-in plugins
{sections}```

Each component joins its section's defaults; `endcap config show` prints the result.

A plugin is trusted code: it runs inside the Endcap server process.
"""


def parse_kinds(kinds: str | Sequence[str]) -> tuple[str, ...]:
    """``"candidates,filter"`` (or a sequence) as kinds, each known and named once."""
    names = [k.strip() for k in kinds.split(",")] if isinstance(kinds, str) else list(kinds)
    unknown = [k for k in names if k not in KINDS]
    if not names or unknown or len(set(names)) != len(names):
        raise InvalidArgument(
            f"--kind takes one or more of {', '.join(KINDS)}, comma-separated, each once; got {kinds!r}"
        )
    return tuple(names)


def _class_name(name: str, kind: str) -> str:
    return "".join(part.capitalize() for part in name.split("_")) + _CLASS_SUFFIX[kind]


def _test_file(values: dict[str, str], kind: str) -> str:
    type_name = values["type_name"]
    entry = f"ranker/ranker ({type_name})" if kind == "ranker" else f"{_SECTION[kind]}/{type_name} ({type_name})"
    return _TEST.format(
        placement=_PLACEMENT[kind].format(**values),
        check=_CHECK[kind].format(**values),
        test_imports=_TEST_IMPORTS.get(kind, _TEST_IMPORTS_DEFAULT),
        setup=_SETUP.get(kind, ""),
        component_entry=entry,
        contract_settings=_CONTRACT_SETTINGS.get(kind, "    config: dict = {}"),
        workspace_import="from endcap.workspace import Workspace\n" if kind == "filter" else "",
        **values,
    )


def scaffold(name: str, kinds: str | Sequence[str], directory: Path) -> Path:
    """Write ``endcap-<name>`` under ``directory`` with one component of each of ``kinds``
    (registered as type ``name``, or ``name_<kind>`` when there are several); returns the root."""
    if not NAME.match(name):
        raise InvalidArgument(
            f"plugin name {name!r} must start with a lowercase letter and use only a-z, 0-9 and _ (at most 41)"
        )
    chosen = parse_kinds(kinds)
    dist = name.replace("_", "-")
    root = directory / f"endcap-{dist}"
    if root.exists():
        raise InvalidArgument(f"{root} already exists; choose another --dir or name")
    common = {"name": name, "dist": dist, "kinds": ", ".join(chosen)}
    each = {
        kind: {
            **common,
            "kind": kind,
            "cls": _class_name(name, kind),
            "type_name": name if len(chosen) == 1 else f"{name}_{kind}",
            "contract": _CONTRACT[kind],
            "section": _SECTION[kind],
        }
        for kind in chosen
    }
    imports = sorted({line for kind in chosen for line in _MODULE_IMPORTS[kind].splitlines() if line})
    module = _MODULE.format(
        imports="\n\n".join(
            block
            for block in (
                "\n".join(i for i in imports if i.startswith("from")),
                "\n".join(i for i in imports if i.startswith("import")),
            )
            if block
        )
        + "\n",
        components="\n\n".join(_COMPONENTS[kind].format(**values) for kind, values in each.items()) + "\n",
        registrations="".join(
            f'    registry.add({values["cls"]}, type_name="{values["type_name"]}")\n' for values in each.values()
        ),
        **common,
    )
    sections = "".join(
        f"{values['section']}:\n  {values['type_name']}: {{type: {values['type_name']}}}\n" for values in each.values()
    )
    files = {
        root / "pyproject.toml": _PYPROJECT.format(**common),
        root / "README.md": _README.format(sections=sections, **common),
        root / f"endcap_{name}" / "__init__.py": module,
    }
    for kind, values in each.items():
        test_name = f"test_{name}.py" if len(chosen) == 1 else f"test_{name}_{kind}.py"
        files[root / "tests" / test_name] = _test_file(values, kind)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
