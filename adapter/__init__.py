"""Methods (LatHAdapter and baselines), the trainer and evaluation over a feature cache; never runs an encoder."""
