"""Learning-rate schedule and training stages (in tokens), and the AdamW optimizer."""
