"""leafe_jax: LEAFE (arXiv:2603.16843) in JAX, with a vmapped pure-JAX Sokoban testbed."""

__version__ = "0.1.0"
