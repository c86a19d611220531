"""``endcap retrain``: the whole offline loop as one idempotent job for a scheduler.

1. take purchases recorded since the last run from the event log, and any new purchase files;
2. rebuild the feature tables and materialize them;
3. train a new version (with its validation figures);
4. promote it only through the gate (:func:`endcap.release.promotion.promote`).

Event-log progress is kept in ``data/retrain.json``; it moves only after the new purchases are
in the canonical log, so a failed run is simply run again. When nothing is new and the current
model was trained on the current log, the job does nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from endcap.data.events import EventLog
from endcap.data.ingest import canonical, load_interactions, read_purchase_log, store_log
from endcap.model_versions import ModelRegistry
from endcap.plugin_host import PluginHost
from endcap.release.promotion import Promotion, promote
from endcap.release.validation_record import rescore_configuration
from endcap.workspace import Workspace

STATE_FILE = "retrain.json"


@dataclass(frozen=True)
class RetrainResult:
    new_purchases: int
    new_files: int
    version: str | None
    promotion: Promotion | None
    skipped: bool


def purchases_since(log: EventLog, offset: int) -> tuple[pd.DataFrame, int]:
    """Purchase events after byte ``offset`` of the event log, as canonical lines, and the new offset."""
    events, end = log.read_from(offset)
    purchases = [e for e in events if e.type == "purchase"]
    frame = pd.DataFrame(
        {
            "user_id": pd.Series([e.user_id for e in purchases], dtype=str),
            "item_id": pd.Series([e.item_id for e in purchases], dtype=str),
            "timestamp": pd.to_datetime([e.timestamp for e in purchases], unit="s", utc=True),
            "quantity": pd.Series([e.quantity for e in purchases], dtype="int32"),
        }
    )
    frame["basket_id"] = frame["user_id"] + "@" + frame["timestamp"].dt.strftime("%Y-%m-%d")
    return frame, end


def retrain(
    workspace: Workspace,
    host: PluginHost,
    files: Sequence[Path] = (),
    say: Callable[[str], None] = print,
) -> RetrainResult:
    from endcap.features.store import build_features
    from endcap.release.validated_training import train

    state_path = workspace.root / "data" / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {"event_offset": 0}
    registry = ModelRegistry(workspace.models)

    say(f"step 1/4: collecting new purchases (event log from byte {state['event_offset']}, {len(files)} file(s))")
    log = load_interactions(workspace)
    events, offset = purchases_since(EventLog(workspace.events_log), state["event_offset"])
    parts = [log, events] + [read_purchase_log(Path(f))[0] for f in files]
    merged = canonical(pd.concat(parts, ignore_index=True)) if len(events) or files else log
    ingest_info = json.loads(workspace.ingest_manifest.read_text()) if workspace.ingest_manifest.exists() else {}
    if len(events) or files:
        summary = store_log(merged, workspace, source=ingest_info.get("source", "retrain"), fmt="canonical")
        fingerprint = summary.fingerprint
    else:
        fingerprint = ingest_info.get("fingerprint", "")
    state_path.write_text(json.dumps({"event_offset": offset}) + "\n")
    say(f"        {len(events)} new purchases from events; log has {len(merged)} lines")

    current = registry.current()
    if current and registry.manifest(current).data_fingerprint == fingerprint:
        say(f"nothing new: the current model {current} was trained on this log; it stays")
        return RetrainResult(len(events), len(files), None, None, skipped=True)

    say("step 2/4: computing and materializing features")
    build_features(workspace, merged, host, feature_store=host.config.feature_store)
    say("step 3/4: training (with validation on each user's newest basket)")
    manifest = train(workspace, host, promote=False)
    ndcg = manifest.validation.get("ndcg@10", float("nan"))
    popular = manifest.validation.get("popularity_ndcg@10", float("nan"))
    say(f"        wrote model {manifest.version}; validation ndcg@10 {ndcg:.4f} (popularity {popular:.4f})")
    say("step 4/4: promotion gate (against popularity and the current model, on the same holdout)")
    promotion = promote(
        registry,
        manifest.version,
        rescore=lambda candidate, current: rescore_configuration(workspace, candidate, current),
    )
    for line in promotion.lines():
        say(f"        {line}")
    say(f"        {manifest.version} is now current (was {promotion.previous})")
    return RetrainResult(len(events), len(files), manifest.version, promotion, skipped=False)
