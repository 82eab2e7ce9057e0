"""Input data for training."""
