"""The evaluation report: markdown tables, a Recall@k chart (PNG) and JSON."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from endcap.evaluation.baselines import ALS_BASELINE
from endcap.evaluation.evaluate import KS, MAX_K, TargetResult
from endcap.evaluation.holdout import MIN_RANDOM_HOLDOUT_ITEMS
from endcap.evaluation.intervals import RESAMPLES

COLUMNS = [
    ("Recall@10", "recall@10"),
    ("NDCG@10", "ndcg@10"),
    ("HitRate@10", "hit_rate@10"),
    ("Recall@20", "recall@20"),
    ("NDCG@20", "ndcg@20"),
    ("HitRate@20", "hit_rate@20"),
    ("Coverage@10", "coverage@10"),
    ("Recall@10 repeat", "recall_repeat@10"),
    ("Recall@10 explore", "recall_explore@10"),
    ("NDCG@10 repeat", "ndcg_repeat@10"),
    ("NDCG@10 explore", "ndcg_explore@10"),
]


PROTOCOL_TEXT = {
    "last-basket": "Temporal split (last-basket): each user's newest basket is the test basket, the one before it "
    "the validation basket, everything earlier trains the models (users with at least three baskets are evaluated).",
    "random-holdout": "Random holdout: a seeded random 25 % of each user's distinct items is the test target, another "
    "disjoint 25 % the validation target, every line of the other items trains the models (users with at least "
    f"{MIN_RANDOM_HOLDOUT_ITEMS} distinct items are evaluated).",
}


def _describe(result: TargetResult) -> str:
    share = "not measured" if result.repeat_share is None else f"{result.repeat_share:.4f}"
    choice = "left out of every ranking" if result.exclude_purchased else "kept"
    return (
        f"Repeat share of the training lines: {share}; exclude_purchased: {str(result.exclude_purchased).lower()} "
        f"(the users' training items are {choice}, baselines included)."
    )


def markdown(results: list[TargetResult], source: str) -> str:
    first = results[0] if results else TargetResult("", 0)
    seed = f" Seed {first.seed}." if first.seed is not None else ""
    lines = [
        "# Endcap offline evaluation",
        "",
        f"Purchase log: `{source}`. Protocol: `{first.protocol}`.{seed} {PROTOCOL_TEXT.get(first.protocol, '')} "
        "NDCG divides by the ideal DCG over the whole target. *Repeat* counts hits on items the user had bought "
        "before, *explore* hits on items new to them. ALS is plain implicit ALS trained on the same training rows "
        f"({', '.join(f'{k}={v}' for k, v in ALS_BASELINE.items())}).",
    ]
    for result in results:
        lines += [
            "",
            f"## {result.name.capitalize()} {'basket' if result.protocol == 'last-basket' else 'target'} — "
            f"{result.users} users, model {result.model_version}",
            "",
            _describe(result),
            "",
            "| System | " + " | ".join(title for title, _ in COLUMNS) + " |",
            "|---|" + "---:|" * len(COLUMNS),
        ]
        for system, scored in result.systems.items():
            cells = " | ".join(f"{scored.metrics.get(key, float('nan')):.4f}" for _, key in COLUMNS)
            lines.append(f"| {system} | {cells} |")
        lines += ["", *intervals_table(result), "", versus_text(result)]
        lines += ["", "Candidate recall (share of target items that reach the ranker):", ""]
        lines += ["| Source | Candidate recall |", "|---|---:|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in result.candidate_recall.items()]
        lines += [
            "",
            f"Features and training took {result.train_seconds:.1f} s; answering and scoring "
            f"{result.users} users took {result.evaluate_seconds:.1f} s.",
        ]
    return "\n".join(lines) + "\n"


INTERVAL_COLUMNS = [
    ("Recall@10", "recall@10"),
    ("NDCG@10", "ndcg@10"),
    ("Recall@20", "recall@20"),
    ("NDCG@20", "ndcg@20"),
]


def intervals_table(result: TargetResult) -> list[str]:
    """Each system's mean and 95 % bootstrap interval over users."""
    lines = [
        f"95 % confidence intervals (bootstrap over the {result.users} users, {RESAMPLES} resamples):",
        "",
        "| System | " + " | ".join(title for title, _ in INTERVAL_COLUMNS) + " |",
        "|---|" + "---:|" * len(INTERVAL_COLUMNS),
    ]
    for system, scored in result.systems.items():
        cells = " | ".join(
            scored.intervals[key].text() if key in scored.intervals else "" for _, key in INTERVAL_COLUMNS
        )
        lines.append(f"| {system} | {cells} |")
    return lines


def versus_text(result: TargetResult) -> str:
    """Whether the pipeline beats the best single system, by a paired bootstrap over users."""
    versus = result.versus
    if versus is None:
        return "No single system was scored beside the pipeline."
    differences = ", ".join(
        f"{title} {versus.differences[key].text(signed=True)}"
        for title, key in INTERVAL_COLUMNS
        if key in versus.differences
    )
    verdict = "significantly better than" if versus.better else "not significantly better than"
    return (
        f"The pipeline is **{verdict}** the best single system, {versus.reference} (by NDCG@10), on the same users: "
        f"pipeline − {versus.reference} = {differences} (paired bootstrap, 95 %)."
    )


def recall_chart(result: TargetResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    ks = list(range(1, MAX_K + 1))
    for system, scored in result.systems.items():
        width = 2.4 if system == "pipeline" else 1.2
        axes.plot(ks, scored.curve, label=system, linewidth=width)
    axes.set_xlabel("k (items recommended)")
    axes.set_ylabel("Recall@k")
    axes.set_title(f"Recall@k on the {result.name} target ({result.users} users, {result.protocol})")
    axes.set_xticks([1, 5, 10, 15, 20])
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def as_json(results: list[TargetResult]) -> str:
    """Every figure of every target (per-user values left out); protocol and seed at the top."""
    targets = [{key: value for key, value in asdict(r).items() if key not in ("per_user", "user_ids")} for r in results]
    first = results[0] if results else TargetResult("", 0)
    return json.dumps({"ks": list(KS), "protocol": first.protocol, "seed": first.seed, "targets": targets}, indent=2)


def write_report(results: list[TargetResult], directory: Path, source: str) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": directory / "report.md",
        "chart": directory / "recall_at_k.png",
        "json": directory / "metrics.json",
    }
    paths["markdown"].write_text(markdown(results, source))
    recall_chart(results[-1], paths["chart"])
    paths["json"].write_text(as_json(results) + "\n")
    return paths
