"""Shared fixtures. Compiled functions are shared per session: JAX compilation dominates."""

import os
import pathlib
import resource

# The tests are CPU tests: never probe for accelerators (e.g. an installed libtpu).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

# Eight fake CPU devices for the sharding tests; single-device code runs on device 0.
# Must happen before any JAX computation initialises the backend.
jax.config.update("jax_num_cpu_devices", 8)

REPO = pathlib.Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


# Modules that hold SmolLM2 (135M, 0.5 GB in float32) and compile it - on 8 fake devices too,
# where one compiled generation program alone takes ~4 GB. ``--dist loadgroup`` (setup.cfg)
# runs them on one xdist worker, one after another, so two never meet on the 24 GB machine.
LM_MODULES = {"test_policy_text.py", "test_text_sokoban.py", "test_policy_gguf.py",
              "test_text_placement.py"}


@pytest.hookimpl(tryfirst=True)         # before xdist reads the groups off the items
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in LM_MODULES:
            item.add_marker(pytest.mark.xdist_group("lm"))


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_after_heavy_modules():
    """After a module that left this worker large (compiled LM programs, loaded weights),
    drop JAX's compiled-function caches: the next modules recompile what they use, and
    the memory goes back to the machine instead of staying with this worker."""
    yield
    if os.path.exists("/proc/self/statm") and _rss_mib() > 3000:
        import ctypes
        import gc
        jax.clear_caches()
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass


def pytest_runtest_logfinish(nodeid, location):
    """With ``LEAFE_TEST_MEMLOG=FILE``: one line per test - this worker's RSS after it and its
    peak so far, and the peak of its child processes (MiB) - to find what drives the memory.
    (A child's peak includes the RSS this worker had when it forked: Linux keeps the
    high-water mark across exec; read that column as an upper bound.)"""
    path = os.environ.get("LEAFE_TEST_MEMLOG")
    if path and os.path.exists("/proc/self/statm"):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\t{nodeid}\t{_rss_mib():.0f}\t{peak:.0f}\t{child:.0f}\n")


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


@pytest.fixture(scope="session")
def tiny_text_policy(smollm2_path, tmp_path_factory) -> str:
    """A text policy as the pipeline leaves one (``checkpoints/`` at step 3 + ``tokenizer/``):
    a tiny random Qwen2-style model with SmolLM2's real tokenizer (its answers never parse;
    for tests of placement and plumbing)."""
    import os

    from leafe_jax.interfaces.text.pretrain import save_tokenizer
    from leafe_jax.policy.config import get_config
    from leafe_jax.policy.model import create_model
    from leafe_jax.policy.tokenizer import Tokenizer
    from leafe_jax.train.checkpoint import Checkpointer
    tok = Tokenizer.from_gguf(smollm2_path)
    d = str(tmp_path_factory.mktemp("text_policy"))
    cfg = get_config("test-tiny").replace(name="tiny-text", vocab_size=tok.vocab_size,
                                          max_seq_len=2048, qkv_bias=True)
    model = create_model(cfg, seed=1)
    ck = Checkpointer(os.path.join(d, "checkpoints"))
    ck.save(3, model, meta={"model": cfg.to_dict(), "tokenizer": "tokenizer", "source": "tiny"},
            force=True)
    ck.manager.wait_until_finished()
    ck.close()
    save_tokenizer(tok, d)
    return d


@pytest.fixture(scope="session")
def tiny_text_hf(tiny_text_policy, tmp_path_factory) -> str:
    """``tiny_text_policy`` exported as a Hugging Face directory (a 'pretrained' model path)."""
    from leafe_jax.train.checkpoint import export_policy
    out = str(tmp_path_factory.mktemp("tiny_hf") / "model")
    export_policy(tiny_text_policy, out, fmt="hf")
    return out
