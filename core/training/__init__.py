"""Fitting: every configured component trained on the log, written as a model version."""
