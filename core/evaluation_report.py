"""The evaluation report: markdown tables, a Recall@k chart (PNG) and JSON."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from endcap.evaluation import KS, MAX_K, TargetResult

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


def markdown(results: list[TargetResult], source: str) -> str:
    lines = [
        "# Endcap offline evaluation",
        "",
        f"Purchase log: `{source}`. Temporal split: each user's newest basket is the test basket, the one "
        "before it the validation basket, everything earlier trains the models (users with at least three "
        "baskets are evaluated). NDCG divides by the ideal DCG over the whole target basket. *Repeat* counts "
        "hits on items the user had bought before, *explore* hits on items new to them.",
    ]
    for result in results:
        lines += [
            "",
            f"## {result.name.capitalize()} basket — {result.users} users, model {result.model_version}",
            "",
            "| System | " + " | ".join(title for title, _ in COLUMNS) + " |",
            "|---|" + "---:|" * len(COLUMNS),
        ]
        for system, scored in result.systems.items():
            cells = " | ".join(f"{scored.metrics.get(key, float('nan')):.4f}" for _, key in COLUMNS)
            lines.append(f"| {system} | {cells} |")
        lines += ["", "Candidate recall (share of target items that reach the ranker):", ""]
        lines += ["| Source | Candidate recall |", "|---|---:|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in result.candidate_recall.items()]
        lines += [
            "",
            f"Features and training took {result.train_seconds:.1f} s; answering and scoring "
            f"{result.users} users took {result.evaluate_seconds:.1f} s.",
        ]
    return "\n".join(lines) + "\n"


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
    axes.set_title(f"Recall@k on the {result.name} basket ({result.users} users)")
    axes.set_xticks([1, 5, 10, 15, 20])
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def as_json(results: list[TargetResult]) -> str:
    return json.dumps({"ks": list(KS), "targets": [asdict(r) for r in results]}, indent=2)


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
