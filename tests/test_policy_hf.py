"""Logits parity with Hugging Face transformers (PyTorch CPU) and checkpoint round trips."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import torch  # hard imports: the reference is in the test extra
import transformers

from leafe_jax.policy.hf import CheckpointError, load_hf, save_hf

SMALL = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64)
LLAMA31 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 16}


def hf_model(kind):
    torch.manual_seed(0)
    if kind == "qwen2-tied":
        cfg = transformers.Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **SMALL)
        m = transformers.Qwen2ForCausalLM(cfg)
    elif kind == "qwen2-untied-mha":
        cfg = transformers.Qwen2Config(num_key_value_heads=4, tie_word_embeddings=False, **SMALL)
        m = transformers.Qwen2ForCausalLM(cfg)
    elif kind == "llama-gqa":
        cfg = transformers.LlamaConfig(num_key_value_heads=2, tie_word_embeddings=False, **SMALL)
        m = transformers.LlamaForCausalLM(cfg)
    else:  # Llama-3.1 rope scaling; sequences longer than the original context of 16
        cfg = transformers.LlamaConfig(num_key_value_heads=1, tie_word_embeddings=True,
                                       rope_theta=500000.0, rope_scaling=LLAMA31, **SMALL)
        m = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():   # HF initialises biases and norms to constants: randomise them all
        for name, p in m.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "norm" in name else 0.0))
    return m.eval()


def hf_logits(m, tok):
    with torch.no_grad():
        return m(torch.tensor(tok)).logits.float().numpy()


TOKENS = np.random.default_rng(0).integers(0, 96, (2, 40))


@pytest.mark.parametrize("kind", ["qwen2-tied", "qwen2-untied-mha", "llama-gqa", "llama31-scaled"])
def test_logits_match_transformers(kind, tmp_path):
    m = hf_model(kind)
    m.save_pretrained(tmp_path)
    ours = load_hf(str(tmp_path))
    assert ours.cfg.qkv_bias == kind.startswith("qwen2")
    assert (ours.cfg.rope_scaling is not None) == (kind == "llama31-scaled")
    got = np.asarray(ours(jnp.asarray(TOKENS))[0])
    np.testing.assert_allclose(got, hf_logits(m, TOKENS), atol=2e-5, rtol=1e-5)


def test_sharded_index_and_export_round_trip(tmp_path):
    m = hf_model("qwen2-untied-mha")
    m.save_pretrained(tmp_path / "hf", max_shard_size="60KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    ours = load_hf(str(tmp_path / "hf"))
    save_hf(ours, str(tmp_path / "ours"))
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    np.testing.assert_allclose(hf_logits(back, TOKENS), hf_logits(m, TOKENS), atol=1e-5)


def test_bad_checkpoints_name_the_problem(tmp_path):
    m = hf_model("llama-gqa")
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing \['model.layers.2"):
        load_hf(str(tmp_path))
    cfg["num_hidden_layers"], cfg["intermediate_size"] = 2, 100
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"layers.0.mlp.gate_proj.weight has shape \(64, 128\).*expects \(64, 100\)"):
        load_hf(str(tmp_path))
    cfg["intermediate_size"], cfg["model_type"] = 128, "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unsupported model_type 'gpt2'"):
        load_hf(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf(str(tmp_path / "nowhere"))
    os.remove(tmp_path / "model.safetensors")
    cfg["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_hf(str(tmp_path))
