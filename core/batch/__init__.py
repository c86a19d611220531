"""Batch jobs: top-k for every user, locally or on Spark, written atomically."""
