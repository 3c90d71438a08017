"""``struct``, ``environment``, ``spaces``: flax's and gymnax's, or JAX-only equivalents.

Set ``LEAFE_JAX_NATIVE_ENV=1`` to use the equivalents even where flax imports (tested).
"""

from __future__ import annotations

import os

NATIVE = os.environ.get("LEAFE_JAX_NATIVE_ENV", "") == "1"
if not NATIVE:
    try:
        from flax import struct
        from gymnax.environments import environment, spaces
    except Exception:          # flax/gymnax missing or broken on this JAX
        NATIVE = True
if NATIVE:
    from leafe_jax.envs._jaxnative import environment, spaces, struct  # noqa: F811

__all__ = ["NATIVE", "environment", "spaces", "struct"]
