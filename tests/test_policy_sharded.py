"""The model and sampler on 8 fake CPU devices equal the single-device results."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leafe_jax.policy.config import get_config
from leafe_jax.policy.model import create_model
from leafe_jax.policy.sampler import generate
from leafe_jax.policy.sampling import Greedy, Temperature
from leafe_jax.sharding import make_mesh

CFG = get_config("test-tiny").replace(vocab_size=64, num_heads=4, num_kv_heads=2)
PROMPTS = np.random.default_rng(0).integers(1, 64, (8, 7)).astype(np.int32)
LENGTHS = np.array([7, 3, 5, 1, 7, 2, 6, 4], np.int32)


@pytest.fixture(scope="module")
def single():
    return create_model(CFG, seed=5)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_sharded_logits_and_samples_match_single_device(single, shape):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    mesh = make_mesh(shape)
    model = create_model(CFG, seed=5, mesh=mesh)
    q = model.layers[0].attn.q.kernel[...]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tp")
    assert len(q.sharding.device_set) == 8
    ref = np.asarray(single(jnp.asarray(PROMPTS))[0])
    with jax.set_mesh(mesh):
        got = np.asarray(model(jnp.asarray(PROMPTS))[0])
    np.testing.assert_allclose(got, ref, atol=2e-5)
    for strategy in (Greedy(), Temperature(temperature=1.0)):
        a = generate(single, PROMPTS, LENGTHS, jax.random.key(3), max_new_tokens=6, strategy=strategy)
        with jax.set_mesh(mesh):
            b = generate(model, PROMPTS, LENGTHS, jax.random.key(3), max_new_tokens=6,
                         strategy=strategy, mesh=mesh)
        assert np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
        np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-4)


def test_mesh_errors():
    with pytest.raises(ValueError, match="does not divide 8 devices"):
        make_mesh((3, 1, -1))
    with pytest.raises(ValueError, match="at most one -1"):
        make_mesh((-1, -1, 1))
