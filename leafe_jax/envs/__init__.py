"""Environments (pure JAX, gymnax API)."""
