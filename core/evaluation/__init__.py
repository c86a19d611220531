"""Offline evaluation: holdout splits, ranking metrics, baselines, the report."""
