"""The ``leafe`` command line (``leafe --help``)."""

from leafe_jax.cli.main import main

__all__ = ["main"]
