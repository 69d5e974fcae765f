"""Evaluation: exact match on held-out conversations (more metrics and baselines to come)."""
