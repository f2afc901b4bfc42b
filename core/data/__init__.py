"""Datasets, degradation helpers and caption sources."""
