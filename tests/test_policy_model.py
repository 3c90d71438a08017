"""Model and sampler: cache = full forward, sampling strategies, determinism, no retraces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from leafe_jax.policy.config import PRESETS, ModelConfig, get_config
from leafe_jax.policy.model import abstract_model, create_model, init_cache
from leafe_jax.policy.sampler import bucket, decode, generate, prefill
from leafe_jax.policy.sampling import Constrained, Greedy, Temperature, TopK, TopP

PROMPTS = np.array([[5, 9, 3, 7, 1, 2], [4, 4, 8, 0, 0, 0], [11, 0, 0, 0, 0, 0]], np.int32)
LENGTHS = np.array([6, 3, 1], np.int32)


@pytest.fixture(scope="module")
def tiny():
    return create_model(get_config("test-tiny").replace(vocab_size=32), seed=3)


_FWD = {}


def full_logits(model, seq, pad_to=16):
    """Full-sequence forward (no cache) of one sequence, jitted at one padded length: the
    model is causal, so trailing padding does not change the positions before it."""
    if id(model) not in _FWD:
        graphdef, state = nnx.split(model)
        _FWD[id(model)] = (jax.jit(lambda st, t: nnx.merge(graphdef, st)(t)[0]), state)
    fwd, state = _FWD[id(model)]
    toks = np.zeros((1, pad_to), np.int32)
    toks[0, :len(seq)] = seq
    return np.asarray(fwd(state, jnp.asarray(toks))[0, :len(seq)])


def test_cached_decode_equals_full_forward_for_ragged_prompts(tiny):
    cache = init_cache(tiny.cfg, 3, 32)
    pos = jnp.broadcast_to(jnp.arange(6)[None], (3, 6))
    lg, cache = tiny(jnp.asarray(PROMPTS), pos, cache=cache, new_lengths_B=jnp.asarray(LENGTHS))
    seqs = [list(PROMPTS[b, :LENGTHS[b]]) for b in range(3)]
    for b in range(3):
        np.testing.assert_allclose(np.asarray(lg[b, :LENGTHS[b]]), full_logits(tiny, seqs[b]), atol=1e-5)
    rng = np.random.default_rng(0)
    for step in range(5):       # rows sit at different depths
        nxt = rng.integers(0, 32, 3)
        lg, cache = tiny(jnp.asarray(nxt[:, None]), cache.lengths[:, None], cache=cache)
        for b in range(3):
            seqs[b].append(int(nxt[b]))
            np.testing.assert_allclose(np.asarray(lg[b, 0]), full_logits(tiny, seqs[b])[-1], atol=1e-5)
    assert np.asarray(cache.lengths).tolist() == (LENGTHS + 5).tolist()


def test_greedy_equals_stepwise_argmax(tiny):
    out = generate(tiny, PROMPTS, LENGTHS, jax.random.key(0), max_new_tokens=7, strategy=Greedy())
    for b in range(3):
        seq = list(PROMPTS[b, :LENGTHS[b]])
        for _ in range(7):
            seq.append(int(np.argmax(full_logits(tiny, seq)[-1])))
        assert np.asarray(out.tokens[b]).tolist() == seq[LENGTHS[b]:]


def test_stop_tokens_and_lengths(tiny):
    ref = generate(tiny, PROMPTS, LENGTHS, jax.random.key(0), max_new_tokens=7, strategy=Greedy())
    stop = int(ref.tokens[0, 2])                 # greedy row 0 emits it at step 3
    out = generate(tiny, PROMPTS, LENGTHS, jax.random.key(0), max_new_tokens=7, strategy=Greedy(),
                   stop_tokens=(stop,), pad_id=0)
    toks = np.asarray(out.tokens)
    for b in range(3):
        r = np.asarray(ref.tokens[b]).tolist()
        n = r.index(stop) + 1 if stop in r else 7
        assert int(out.lengths[b]) == n and bool(out.done[b]) == (stop in r)
        assert toks[b, :n].tolist() == r[:n] and (toks[b, n:] == 0).all()
        assert (np.asarray(out.logprobs[b, n:]) == 0).all()


def test_sampling_strategies_respect_their_supports(tiny):
    key = jax.random.key(1)
    logits = jax.random.normal(key, (512, 32)) * 3
    keys = jax.random.split(jax.random.key(2), 4)
    tok, _ = TopK(k=3).get_next_tokens(logits, keys[0])
    top3 = np.argsort(-np.asarray(logits), -1)[:, :3]
    assert all(int(t) in row for t, row in zip(np.asarray(tok), top3))
    tok, _ = TopP(p=0.5).get_next_tokens(logits, keys[1])
    probs = np.asarray(jax.nn.softmax(logits, -1))
    for t, p in zip(np.asarray(tok), probs):
        mass_above = p[p > p[t]].sum()
        assert mass_above < 0.5                       # inside the nucleus
    allowed = (3, 17, 30)
    mask = np.ones((512, 32), bool)
    mask[:, 17] = False                               # a forbidden action for every row
    tok, lp = Constrained(allowed=allowed).get_next_tokens(logits, keys[2], jnp.asarray(mask))
    assert set(np.asarray(tok).tolist()) <= {3, 30}
    assert set(np.asarray(tok).tolist()) == {3, 30}   # both actually sampled
    ref = jax.nn.log_softmax(jnp.where(jnp.asarray([[i in (3, 30) for i in range(32)]]), logits, -1e30), -1)
    np.testing.assert_allclose(np.asarray(lp), np.asarray(ref)[np.arange(512), np.asarray(tok)], rtol=1e-5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Temperature(temperature=0.0)


def test_same_key_same_samples_and_no_retrace(tiny):
    kw = dict(max_new_tokens=5, strategy=Temperature(temperature=1.0))
    a = generate(tiny, PROMPTS, LENGTHS, jax.random.key(7), **kw)
    b = generate(tiny, PROMPTS, LENGTHS, jax.random.key(7), **kw)
    c = generate(tiny, PROMPTS, LENGTHS, jax.random.key(8), **kw)
    assert np.array_equal(a.tokens, b.tokens) and not np.array_equal(a.tokens, c.tokens)
    n_pre, n_dec = prefill._cache_size(), decode._cache_size()
    other = PROMPTS.copy()
    other[:, :5] = 9                                  # new values, new lengths, same bucket
    generate(tiny, other[:, :5], np.array([5, 2, 4]), jax.random.key(9), **kw)
    assert (prefill._cache_size(), decode._cache_size()) == (n_pre, n_dec)


def test_input_errors(tiny):
    with pytest.raises(ValueError, match="lengths must be in"):
        generate(tiny, PROMPTS, np.array([6, 0, 1]), jax.random.key(0), max_new_tokens=2, strategy=Greedy())
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(tiny, PROMPTS, LENGTHS, jax.random.key(0), max_new_tokens=500, strategy=Greedy())
    with pytest.raises(ValueError, match="tokens must be"):
        tiny(jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="not a multiple"):
        ModelConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=3,
                    num_kv_heads=2, head_dim=4)


@pytest.mark.parametrize("name, billions", [
    ("qwen2.5-0.5b", 0.494), ("qwen2.5-1.5b", 1.544), ("qwen2.5-7b", 7.616),
    ("qwen2.5-72b", 72.71), ("llama3.1-8b", 8.030), ("llama3.1-70b", 70.55)])
def test_large_presets_build_abstractly_with_published_sizes(name, billions):
    _, state = abstract_model(PRESETS[name])
    n = sum(x.size for x in jax.tree.leaves(state))
    assert n / 1e9 == pytest.approx(billions, rel=2e-3)
    assert n == PRESETS[name].num_params()


def test_config_dict_round_trip_keeps_rope_scaling():
    import json
    cfg = PRESETS["llama3.1-8b"]
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.rope_scaling is not None
    with pytest.raises(ValueError, match=r"unknown model config keys \['bogus'\]"):
        ModelConfig.from_dict(cfg.to_dict() | {"bogus": 1})


def test_bucket_sizes():
    """Powers of two by default; with ``steps`` sizes per octave, the next of the evenly
    spaced sizes (hand-worked), never below ``n`` or ``minimum``, monotone, and at most
    1 / steps of padding above the octave's lower edge."""
    assert [bucket(n) for n in (1, 16, 17, 122, 129, 330)] == [16, 16, 32, 128, 256, 512]
    assert [bucket(n, 16, 4) for n in (1, 17, 21, 128, 129, 153, 161, 330, 512)] == \
        [16, 20, 24, 128, 160, 160, 192, 384, 512]
    assert [bucket(n, 1, 2) for n in (1, 2, 3, 5, 7, 9, 13, 17, 25, 33)] == [1, 2, 3, 6, 8, 12, 16, 24, 32, 48]
    for steps in (1, 2, 4):
        sizes = [bucket(n, 8, steps) for n in range(1, 3000)]
        assert all(s >= max(n, 8) for n, s in zip(range(1, 3000), sizes))
        assert sizes == sorted(sizes)
        assert all(s <= max(8, n * (1 + 1 / steps)) for n, s in zip(range(1, 3000), sizes) if n > 8)
