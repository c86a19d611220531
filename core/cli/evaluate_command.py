"""``endcap evaluate``: the offline evaluation report, against baselines and with ablations."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from endcap.cli.commands import CommandTable, limit_blas_threads, load_host, say
from endcap.workspace import Workspace

DEFAULT_HOLDOUT_SEED = 20240101
"""The random holdout's default seed (as ``endcap.evaluation.holdout.DEFAULT_SEED``; kept light)."""


def cmd_evaluate(args: argparse.Namespace, workspace: Workspace) -> int:
    import json
    from datetime import UTC, datetime

    from endcap.data.ingest import load_interactions
    from endcap.evaluation.evaluate import evaluate
    from endcap.evaluation.report import as_json, markdown, write_report

    limit_blas_threads()
    config, host = load_host(workspace)
    log = load_interactions(workspace)
    started = time.perf_counter()
    results = evaluate(workspace, config, host, log, protocol=args.protocol, seed=args.seed)
    source = json.loads(workspace.ingest_manifest.read_text())["source"] if workspace.ingest_manifest.exists() else ""
    out = (
        Path(args.out)
        if args.out
        else workspace.root / "reports" / datetime.now(UTC).strftime("evaluation-%Y%m%dT%H%M%SZ")
    )
    paths = write_report(results, out, source)
    if args.json:
        say(as_json(results))
    else:
        say(markdown(results, source))
        say(f"report: {paths['markdown']}\nchart: {paths['chart']}\njson: {paths['json']}")
        say(f"evaluation took {time.perf_counter() - started:.1f}s")
    return 0


def add_commands(commands: CommandTable) -> None:
    evaluate = commands.add("evaluate", cmd_evaluate, "holdout evaluation against baselines, with ablations")
    evaluate.add_argument(
        "--protocol",
        choices=("last-basket", "random-holdout"),
        default="last-basket",
        help="last-basket: each user's newest basket is the test target (default); random-holdout: a seeded "
        "random 25%% of each user's items (for logs without baskets, such as ratings)",
    )
    evaluate.add_argument(
        "--seed", type=int, default=DEFAULT_HOLDOUT_SEED, help=f"random-holdout seed (default {DEFAULT_HOLDOUT_SEED})"
    )
    evaluate.add_argument("--out", help="report directory (default: <workspace>/reports/evaluation-<time>)")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON instead of markdown")
