"""Watching the live service: monitor hooks off the request path, /metrics, reports."""
