"""Shared fixtures. Compiled functions are shared per session: JAX compilation dominates."""

import os
import pathlib

# The tests are CPU tests: never probe for accelerators (e.g. an installed libtpu).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

# Eight fake CPU devices for the sharding tests; single-device code runs on device 0.
# Must happen before any JAX computation initialises the backend.
jax.config.update("jax_num_cpu_devices", 8)

REPO = pathlib.Path(__file__).resolve().parents[1]


def boxoban_dir() -> pathlib.Path:
    """The sample Boxoban files (``../shared/data/boxoban`` beside the checkout)."""
    return pathlib.Path(os.environ.get("LEAFE_BOXOBAN_DIR", REPO.parent / "shared" / "data" / "boxoban"))


@pytest.fixture(scope="session")
def boxoban_path() -> pathlib.Path:
    d = boxoban_dir()
    if not (d / "unfiltered" / "train" / "000.txt").is_file():
        pytest.skip(f"Boxoban sample files not found at {d} (set LEAFE_BOXOBAN_DIR); "
                    "CI has them beside the checkout")
    return d


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The embedded SmolLM2-135M-Instruct GGUF (installed by .ci/run and the README)."""
    from leafe_jax.policy.pretrained import resolve
    try:
        return resolve("smollm2-135m-instruct")
    except FileNotFoundError as e:
        pytest.skip(str(e))
