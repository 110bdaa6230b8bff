"""Scoring translations: translate the val set, confusion-matrix metrics, the bootstrap, FID, evaluate."""
