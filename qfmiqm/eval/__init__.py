"""Evaluation: metrics, the N-split protocol, reports."""
