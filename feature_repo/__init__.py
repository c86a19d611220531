"""Endcap's Feast feature repository (see definitions.py and feature_store.yaml)."""
