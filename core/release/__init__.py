"""What makes a model version current: validation, the promotion gate, the retrain job."""
