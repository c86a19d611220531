"""A plugin author's trial, through the command line as they would run it: an installed package
with its own Feast view of promotions and stock, a source of discounted products, a stock filter,
a discount feature for the ranker and a monitor. The defaults stay, the plugin's data is there
in training, evaluation and serving, and the monitor sees which source proposed each item."""

from __future__ import annotations

import json
import textwrap
from datetime import timedelta
from pathlib import Path

import grpc
import pandas as pd
import yaml
from conftest import run_cli, start_server, stop_server
from endcap.config import EndcapConfig
from endcap.model_versions import ModelRegistry
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc
from test_feature_providers import FIRST_OFFER, SECOND_OFFER, START, promotion_log
from test_plugin_authoring import pip_install

PACKAGE = '''
"""endcap-freshdeals: products on offer, stock, and the discount as a ranking feature."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import endcap
import numpy as np

VIEW = "freshdeals"


class DealsSource(endcap.CandidateGenerator):
    """Proposes the products on offer, deepest discount first."""

    def load(self, context: endcap.ModelContext) -> None:
        self.ids, self.scores = np.empty(0, np.int32), np.empty(0, np.float32)
        if context.product_features is None:
            return
        frame = context.product_features([f"{VIEW}:discount"])
        discount = np.nan_to_num(frame["discount"].to_numpy(np.float32, na_value=np.nan))
        on_offer = np.flatnonzero(discount > 0)
        order = on_offer[np.argsort(-discount[on_offer], kind="stable")]
        self.ids, self.scores = order.astype(np.int32), discount[order]

    def generate(self, query: endcap.Query, user: endcap.UserFeatures, n: int) -> endcap.Candidates:
        return endcap.Candidates(self.ids[:n], self.scores[:n])


class StockFilter(endcap.Filter):
    """Never shows a product whose stock is 0."""

    def load(self, context: endcap.ModelContext) -> None:
        self.in_stock = np.ones(context.catalog.n_items, dtype=bool)
        if context.product_features is not None:
            stock = context.product_features([f"{VIEW}:in_stock"])["in_stock"].to_numpy(np.float64, na_value=np.nan)
            self.in_stock = ~(stock == 0)

    def keep(self, query: endcap.Query, ids: np.ndarray) -> np.ndarray:
        return self.in_stock[ids]


class DiscountFeature(endcap.FeatureProvider):
    def product_references(self) -> tuple[str, ...]:
        return (f"{VIEW}:discount",)

    def names(self) -> tuple[str, ...]:
        return ("deals.discount",)

    def compute(self, query: Any, user: Any, ids: np.ndarray, products: np.ndarray) -> np.ndarray:
        return np.nan_to_num(products[ids], copy=True)


class AuditConfig(endcap.ComponentConfig):
    path: str


class Audit(endcap.Monitor):
    """One JSON line per answer: its items, their sources and the discount column's largest value."""

    Config = AuditConfig
    config: AuditConfig
    needs_ranking_examples = True

    def fit(self, data: endcap.TrainingData, directory: Path) -> dict[str, Any]:
        examples = data.ranking_examples
        if examples is None or "deals.discount" not in examples.names:
            return {"discounted_rows": 0}
        return {"discounted_rows": int((examples.values[:, examples.names.index("deals.discount")] > 0).sum())}

    def on_request(self, record: endcap.RequestRecord) -> None:
        discount = 0.0
        if record.features is not None and "deals.discount" in record.features.names:
            discount = float(record.features.column("deals.discount").max(initial=0.0))
        line = {"request_id": record.request_id, "items": list(record.item_ids),
                "sources": [list(s) for s in record.item_sources], "max_discount": discount}
        with open(self.config.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\\n")


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(DealsSource, type_name="deals")
    registry.add(StockFilter, type_name="stock")
    registry.add(DiscountFeature, type_name="discount")
    registry.add(Audit, type_name="audit")


@endcap.hookimpl
def endcap_feast_objects(features_dir: Path) -> list[Any]:
    from endcap.feature_repo.definitions import product
    from feast import FeatureView, Field, FileSource
    from feast.types import Float32, Int64

    source = FileSource(name=f"{VIEW}_source", path=str(features_dir / "freshdeals.parquet"),
                        timestamp_field="event_timestamp")
    return [FeatureView(name=VIEW, entities=[product], ttl=timedelta(days=3650), source=source,
                        schema=[Field(name="discount", dtype=Float32), Field(name="in_stock", dtype=Int64)])]
'''

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "endcap-freshdeals"
version = "0.1.0"
dependencies = ["endcap"]

[project.entry-points.endcap]
freshdeals = "endcap_freshdeals"

[tool.setuptools]
packages = ["endcap_freshdeals"]
"""


def install_plugin(tmp_path: Path) -> dict[str, str]:
    source = tmp_path / "endcap-freshdeals"
    (source / "endcap_freshdeals").mkdir(parents=True)
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / "endcap_freshdeals" / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    pip_install(source, tmp_path / "site")
    return {"PYTHONPATH": str(tmp_path / "site")}


def shop_data(log: pd.DataFrame, features_dir: Path) -> str:
    """Promotions as in :mod:`test_feature_providers`, and the best-selling regular product out of
    stock from the middle of day 8; returns that product."""
    regular = log[~log["item_id"].isin(FIRST_OFFER + SECOND_OFFER)]
    sold_out = str(regular["item_id"].value_counts().index[0])
    starts, ends = START + timedelta(days=7.5), START + timedelta(days=8.5)
    rows = (
        [(item, 0.3, 1, starts) for item in FIRST_OFFER]
        + [(item, 0.0, 1, ends) for item in FIRST_OFFER]
        + [(item, 0.3, 1, ends) for item in SECOND_OFFER]
        + [(sold_out, 0.0, 0, ends)]
    )
    features_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=["item_id", "discount", "in_stock", "event_timestamp"])
    frame.astype({"discount": "float32", "in_stock": "int64"}).to_parquet(features_dir / "freshdeals.parquet")
    return sold_out


def discounted_rows(version: Path) -> int:
    """Training-example rows with a discount, as the audit monitor counted them while training."""
    manifest = json.loads((version / "manifest.json").read_text())
    return int(manifest["components"]["monitors/audit"]["params"]["discounted_rows"])


def test_a_plugin_with_its_own_data_takes_part_in_training_evaluation_and_serving(tmp_path: Path) -> None:
    env = install_plugin(tmp_path)
    log = promotion_log(users=40)
    log.to_csv(tmp_path / "log.csv", index=False)
    workspace = tmp_path / "ws"
    run_cli("ingest", str(tmp_path / "log.csv"), workspace=workspace)
    sold_out = shop_data(log, workspace / "features")
    audit = tmp_path / "audit.jsonl"
    (workspace / "endcap.yaml").write_text(
        yaml.safe_dump(
            {
                "plugins": ["freshdeals"],
                "candidates": {"deals": {"type": "deals"}},
                "filters": {"stock": {"type": "stock"}},
                "features": {"deals": {"type": "discount"}},
                "monitors": {"audit": {"type": "audit", "path": str(audit)}},
            }
        )
    )

    shown = run_cli("config", "show", workspace=workspace, env=env).stdout
    defaults = EndcapConfig()
    for section in ("candidates", "features", "monitors"):
        for name, block in getattr(defaults, section).items():
            assert f"  {name}: {{type: {block.type}}}  # default" in shown, f"{section}.{name} was dropped"
    assert "  deals: {type: deals}  # endcap.yaml" in shown and "  - freshdeals  # endcap.yaml" in shown

    run_cli("features", workspace=workspace, env=env)
    trained = run_cli("train", workspace=workspace, env=env)
    assert "validation" in trained.stdout + trained.stderr
    version = ModelRegistry(workspace / "models").path()
    assert discounted_rows(version) > 0

    run_cli("evaluate", workspace=workspace, env=env)
    holdout = max((workspace / "evaluation" / "holdout" / "models").glob("v*"))  # train's validation
    tested = max((workspace / "evaluation" / "test" / "models").glob("v*"))  # evaluate's test split
    assert discounted_rows(holdout) > 0 and discounted_rows(tested) > 0  # their stores have the plugin's view
    # evaluate's validation split labels day 7, before any promotion began: point-in-time, none shows
    assert discounted_rows(max((workspace / "evaluation" / "validation" / "models").glob("v*"))) == 0

    server = start_server(workspace, tmp_path, env)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.RecommendationServiceStub(channel)
            replies = [
                stub.Recommend(pb.RecommendRequest(user_id=f"shopper-{u:03d}", k=10), timeout=10) for u in range(20)
            ]
    finally:
        stop_server(server)
    answered = [[item.item_id for item in reply.items] for reply in replies]
    assert all(len(items) == 10 for items in answered)
    assert not any(sold_out in items for items in answered), "an out-of-stock product was shown"
    assert any("deals" in item.sources for reply in replies for item in reply.items)
    audited = {line["request_id"]: line for line in map(json.loads, audit.read_text().splitlines())}
    for reply in replies:
        line = audited[reply.request_id]
        assert line["items"] == [item.item_id for item in reply.items]
        assert line["sources"] == [list(item.sources) for item in reply.items]
        assert line["max_discount"] > 0  # the discount column is served, not zero
