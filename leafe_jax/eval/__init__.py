"""Evaluation: Pass@k estimation and sweeps."""
