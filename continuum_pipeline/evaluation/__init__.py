"""Evaluation: golden sets and the regression gate between champion and candidate."""
