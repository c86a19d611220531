"""``endcap train``, ``promote``, ``models`` and ``retrain``: model versions and the promotion gate."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from endcap.cli.commands import CommandTable, limit_blas_threads, load_host, say
from endcap.errors import EndcapError
from endcap.workspace import Workspace

if TYPE_CHECKING:
    from endcap.model_versions import Manifest
    from endcap.release.promotion import Promotion, Rescore

GATE_REFUSED = 3
"""Exit status of ``train`` and ``retrain`` when the promotion gate keeps the current model."""


def gate_rescore(workspace: Workspace) -> Rescore:
    """The promotion gate's way to score the current configuration on a candidate's holdout."""
    from endcap.release.validation_record import rescore_configuration

    return lambda candidate, current: rescore_configuration(workspace, candidate, current)


def say_comparisons(promotion: Promotion) -> None:
    for line in promotion.lines():
        say(f"  {line}")


def say_trained(manifest: Manifest, seconds: float, exclude_purchased_setting: str) -> None:
    validation = manifest.validation
    say(
        f"trained model {manifest.version} on {manifest.training_rows} rows "
        f"({manifest.users} users, {manifest.items} items) in {seconds:.1f}s; "
        f"validation ndcg@10 {validation.get('ndcg@10', float('nan')):.4f} "
        f"(popularity {validation.get('popularity_ndcg@10', float('nan')):.4f}), "
        f"recall@10 {validation.get('recall@10', float('nan')):.4f}"
    )
    say(
        f"repeat purchases: {manifest.repeat_share or 0.0:.1%} of the log's lines; already-bought items are "
        f"{'left out of' if manifest.exclude_purchased else 'kept in'} answers "
        f"(serving.exclude_purchased: {exclude_purchased_setting})"
    )


def cmd_train(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.model_versions import ModelRegistry
    from endcap.release.promotion import GateRefused, promote
    from endcap.release.validated_training import train

    limit_blas_threads()
    config, host = load_host(workspace)
    started = time.perf_counter()
    manifest = train(workspace, host, promote=False, validate=not args.no_validate)
    say_trained(manifest, time.perf_counter() - started, config.serving.exclude_purchased)
    if args.no_promote:
        say("not promoted (--no-promote); 'endcap promote' makes it current")
        return 0
    if args.no_validate:
        say(
            "not promoted: not validated (--no-validate), so the gate has nothing to compare; "
            "'endcap promote --force' makes it current"
        )
        return 0
    try:
        done = promote(ModelRegistry(workspace.models), manifest.version, rescore=gate_rescore(workspace))
    except GateRefused as exc:
        say(f"written but not promoted: {exc}")
        return GATE_REFUSED
    say_comparisons(done)
    say(f"{manifest.version} is now current (previous: {done.previous or 'none'})")
    return 0


def cmd_promote(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.model_versions import ModelRegistry
    from endcap.release.promotion import promote

    done = promote(ModelRegistry(workspace.models), args.version, force=args.force, rescore=gate_rescore(workspace))
    say_comparisons(done)
    scores = f" (validation ndcg@10 {done.candidate_score:.4f})" if done.candidate_score is not None else ""
    forced = " (forced past the gate)" if done.forced else ""
    say(f"{done.version} is now current{scores}{forced}; previous: {done.previous or 'none'}")
    return 0


def cmd_models(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.model_versions import ModelRegistry

    registry = ModelRegistry(workspace.models)
    current = registry.current()
    say(f"  {'version':<28} {'trained at':<20} {'rows':>9} {'ndcg@10':>8} {'recall@10':>9}  data")
    for version in registry.versions():
        m = registry.manifest(version)
        marker = "*" if version == current else " "
        ndcg, recall = m.validation.get("ndcg@10"), m.validation.get("recall@10")
        say(
            f"{marker} {version:<28} {m.trained_at[:19]:<20} {m.training_rows:>9} "
            f"{'-' if ndcg is None else f'{ndcg:.4f}':>8} {'-' if recall is None else f'{recall:.4f}':>9}  "
            f"{m.data_fingerprint[:12]}"
        )
    if not registry.versions():
        say("no model versions yet; run 'endcap train'")
    return 0


def cmd_retrain(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.release.promotion import GateRefused
    from endcap.release.retrain import retrain

    limit_blas_threads()
    _, host = load_host(workspace)
    started = time.perf_counter()
    try:
        result = retrain(workspace, host, [Path(p) for p in args.input or []], say=say)
    except GateRefused as exc:
        print(f"endcap retrain: gate refused: {exc}", file=sys.stderr)
        return GATE_REFUSED
    except EndcapError:
        raise
    except Exception as exc:  # a scheduler needs a clear line and a non-zero exit, the log has the rest
        import structlog

        structlog.get_logger("endcap.retrain").exception("retrain_failed")
        print(f"endcap retrain: failed at the step above: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    say(f"retrain finished in {time.perf_counter() - started:.1f}s" + (" (nothing to do)" if result.skipped else ""))
    return 0


def add_commands(commands: CommandTable) -> None:
    train = commands.add("train", cmd_train, "fit every configured component and write a new model version")
    train.add_argument("--no-promote", action="store_true", help="write the version without making it current")
    train.add_argument(
        "--no-validate",
        action="store_true",
        help="skip the validation holdout (trains once; the promotion gate then refuses the version unless --force)",
    )

    promote = commands.add(
        "promote",
        cmd_promote,
        "make a model version current if, on the same holdout, it beats popularity and is not worse than the current",
    )
    promote.add_argument("version", nargs="?", help="version to promote (default: the newest)")
    promote.add_argument("--force", action="store_true", help="promote without the gate's comparisons")

    commands.add("models", cmd_models, "list model versions with their validation metrics (* = current)")

    retrain = commands.add(
        "retrain", cmd_retrain, "new events and files → features → train → evaluate → gated promotion"
    )
    retrain.add_argument("--input", nargs="*", metavar="PATH", help="new purchase files to add to the log")
