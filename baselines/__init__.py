"""Null baselines (installed as `sparsebench.baselines`): models with the shape but not the mechanism."""
