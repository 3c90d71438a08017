"""GGUF checkpoints: a small llama GGUF written here round-trips to the same logits (llama.cpp's
Q/K permutation undone); the packaged SmolLM2-135M-Instruct matches transformers' own GGUF
loading; truncated files, other architectures and missing tensors are clear errors."""

import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from leafe_jax.policy.config import get_config  # noqa: E402
from leafe_jax.policy.gguf import GGUFError, gguf_config, load_gguf, unpermute  # noqa: E402
from leafe_jax.policy.hf import CheckpointError, name_map  # noqa: E402
from leafe_jax.policy.model import create_model  # noqa: E402

CFG = get_config("test-tiny").replace(vocab_size=64, max_seq_len=128)


def llama_cpp_permute(w, n_head):
    """The permutation llama.cpp's convert_hf_to_gguf.py applies to llama's Q and K rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, model, *, arch="llama", skip=(), quant=None):
    import jax
    from flax import nnx
    cfg = model.cfg
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_layers)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_key_length(cfg.hd)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    inv = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    kinds = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}
    for hf, (ours, transpose) in name_map(cfg).items():
        arr = np.asarray(jax.device_get(flat[ours].get_value()), np.float32)
        arr = np.ascontiguousarray(arr.T if transpose else arr)
        if hf in inv:
            name = inv[hf]
        else:
            _, _, i, *rest = hf.split(".")
            name = f"blk.{i}.{kinds['.'.join(rest[:-1])]}.{rest[-1]}"
        if name in skip:
            continue
        if hf.endswith("q_proj.weight"):
            arr = llama_cpp_permute(arr, cfg.num_heads)
        elif hf.endswith("k_proj.weight"):
            arr = llama_cpp_permute(arr, cfg.num_kv_heads)
        if quant is not None and arr.ndim == 2:
            w.add_tensor(name, gguf.quants.quantize(arr, quant), raw_dtype=quant)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unpermute_inverts_llama_cpp():
    w = np.arange(8 * 64 * 3, dtype=np.float32).reshape(8 * 64 // 8, 24)[:128].reshape(128, -1)
    np.testing.assert_array_equal(unpermute(llama_cpp_permute(w, 4), 4), w)
    assert not np.array_equal(llama_cpp_permute(w, 4), w)


@pytest.mark.parametrize("quant", [None, "Q8_0"])
def test_gguf_round_trip_gives_the_same_logits(tmp_path, quant):
    model = create_model(CFG, seed=0)
    q = None if quant is None else getattr(gguf.GGMLQuantizationType, quant)
    write_gguf(tmp_path / "m.gguf", model, quant=q)
    cfg = gguf_config(str(tmp_path / "m.gguf"))
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.hd, cfg.tie_embeddings) == \
        (CFG.num_layers, CFG.num_heads, CFG.num_kv_heads, CFG.hd, CFG.tie_embeddings)
    back = load_gguf(str(tmp_path / "m.gguf"))
    toks = np.arange(20)[None] % CFG.vocab_size
    a, b = np.asarray(model(toks)[0]), np.asarray(back(toks)[0])
    np.testing.assert_allclose(b, a, atol=1e-5 if quant is None else 5e-2)


def test_bad_gguf_files_are_named(tmp_path):
    model = create_model(CFG, seed=0)
    write_gguf(tmp_path / "m.gguf", model)
    raw = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "trunc.gguf").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(GGUFError, match=r"trunc.gguf: .*(truncated|corrupt)"):
        load_gguf(str(tmp_path / "trunc.gguf"))
    write_gguf(tmp_path / "gpt2.gguf", model, arch="gpt2")
    with pytest.raises(GGUFError, match=r"gpt2.gguf: unsupported architecture 'gpt2' \(supported: llama, qwen2\)"):
        load_gguf(str(tmp_path / "gpt2.gguf"))
    write_gguf(tmp_path / "hole.gguf", model, skip=("blk.1.attn_v.weight",))
    with pytest.raises(CheckpointError, match=r"hole.gguf: checkpoint does not match .*missing \['model.layers.1.self_attn.v_proj.weight'\]"):
        load_gguf(str(tmp_path / "hole.gguf"))
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        load_gguf(str(tmp_path / "none.gguf"))


@pytest.mark.slow
def test_smollm2_logits_match_transformers_gguf_loading(smollm2_path):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    path = smollm2_path
    model = load_gguf(path)
    # the architecture preset (random-weight decode benchmarks) is this file's architecture
    preset = get_config("smollm2-135m")
    assert model.cfg.replace(name=preset.name, rms_norm_eps=preset.rms_norm_eps, head_dim=None) == preset
    assert model.cfg.hd == preset.hd == 64
    assert model.cfg.rms_norm_eps == pytest.approx(preset.rms_norm_eps, rel=1e-6)
    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                               dtype=torch.float32)
    toks = np.array([[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11, 2, 198, 1, 4093, 198, 19556, 30],
                     [1, 4093, 198, 28120, 905, 2, 198, 1, 520, 9531, 198, 504, 3458, 314, 216, 33]])
    with torch.no_grad():
        want = ref(torch.tensor(toks)).logits.numpy()
    got = np.asarray(model(toks)[0])
    # float32 through 30 layers in another summation order: 7.4e-5 measured on one CPU,
    # 1.03e-4 on an AVX-512-FP16 one (same packages), with logits up to ~30 - so 2e-4 is
    # ~7e-6 of the logit range; a real mistake (RoPE layout, norm eps, Q/K permutation)
    # is >= 1e-2.
    TOL = 2e-4
    assert np.abs(want).max() > 20
    assert np.abs(got - want).max() <= TOL, np.abs(got - want).max()
    # cached decode: prefill 12 tokens, then feed the rest one at a time through the KV cache
    from leafe_jax.policy.model import init_cache
    cache = init_cache(model.cfg, toks.shape[0], 32)
    logits, cache = model(toks[:, :12], cache=cache)[:2]
    steps = [np.asarray(logits)]
    for t in range(12, toks.shape[1]):
        out, cache = model(toks[:, t: t + 1], cache=cache)[:2]
        steps.append(np.asarray(out))
    dec = np.concatenate(steps, 1)
    assert np.abs(dec - want).max() <= TOL, np.abs(dec - want).max()
