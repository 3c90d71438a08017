"""GGUF checkpoints (llama.cpp's format) -> ``Transformer``: llama and qwen2 architectures.

The config comes from the file's metadata; tensors are read and dequantized to float32 by
the ``gguf`` package (maintained with llama.cpp: F32, F16, BF16, Q8_0, Q4_0/1, Q5_0/1 and the
K-quants), renamed to Hugging Face names and placed with the model's shardings by
``hf.place_weights``. llama.cpp's converter permutes the rows of llama's Q and K projections
(from HF's split-half RoPE layout to GGML's interleaved one); that permutation is undone here
so our RoPE sees HF's layout. Qwen2 is stored unpermuted (GGML runs it in NeoX mode).

``load_gguf(path)`` -> model; ``gguf_config(path)`` -> ``ModelConfig``; the tokenizer and chat
template of the same file: ``policy.tokenizer.Tokenizer.from_gguf``.
"""

from __future__ import annotations

import os

import numpy as np

from leafe_jax.policy.config import ModelConfig, dtype_pair
from leafe_jax.policy.hf import CheckpointError, place_weights

ARCHITECTURES = ("llama", "qwen2")
_LAYER = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
          "ffn_norm": "post_attention_layernorm"}
_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}


class GGUFError(CheckpointError):
    pass


def _gguf():
    try:
        import gguf
    except ImportError:                 # a declared dependency; say so if it is missing
        raise GGUFError("reading GGUF files needs the `gguf` package (pip install gguf)") from None
    return gguf


def reader(path: str):
    """``gguf.GGUFReader`` of ``path``, with a clear error for a missing or truncated file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such GGUF file")
    try:
        return _gguf().GGUFReader(path)
    except (ValueError, IndexError, EOFError, OSError) as e:
        raise GGUFError(f"{path}: not a readable GGUF file (truncated or corrupt: "
                        f"{type(e).__name__}: {e})") from None


def metadata(r, key: str, default=None, *, path: str = ""):
    f = r.fields.get(key)
    if f is None:
        if default is None:
            raise GGUFError(f"{path}: metadata key {key!r} is missing")
        return default
    return f.contents()


def hf_name(name: str) -> str | None:
    """GGUF tensor name -> Hugging Face name (None for tensors we do not use)."""
    if name in _TOP:
        return _TOP[name]
    parts = name.split(".")                      # blk.{i}.{kind}.{weight|bias}
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER:
        return f"model.layers.{parts[1]}.{_LAYER[parts[2]]}.{parts[3]}"
    return None


def config_from_gguf(r, *, path: str = "", name: str | None = None, dtype: str = "float32") -> ModelConfig:
    arch = metadata(r, "general.architecture", path=path)
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{path}: unsupported architecture {arch!r} (supported: {', '.join(ARCHITECTURES)})")
    m = lambda k, d=None: metadata(r, f"{arch}.{k}", d, path=path)
    heads = int(m("attention.head_count"))
    hidden = int(m("embedding_length"))
    tensors = {t.name for t in r.tensors}
    pd, cd = dtype_pair(dtype)              # a dtype policy name (float32, bf16-mixed, bfloat16)
    vocab = metadata(r, f"{arch}.vocab_size", -1, path=path)
    if vocab == -1:
        vocab = len(r.fields["tokenizer.ggml.tokens"].data)
    return ModelConfig(name=name or os.path.splitext(os.path.basename(path))[0], vocab_size=int(vocab),
                       hidden_size=hidden, intermediate_size=int(m("feed_forward_length")),
                       num_layers=int(m("block_count")), num_heads=heads,
                       num_kv_heads=int(m("attention.head_count_kv", heads)),
                       head_dim=int(m("attention.key_length", hidden // heads)),
                       rope_theta=float(m("rope.freq_base", 10000.0)), rope_scaling=None,
                       rms_norm_eps=float(m("attention.layer_norm_rms_epsilon", 1e-6)),
                       qkv_bias=arch == "qwen2", tie_embeddings="output.weight" not in tensors,
                       max_seq_len=int(m("context_length", 2048)), param_dtype=pd, dtype=cd)


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE pairs -> split halves)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_config(path: str, **kw) -> ModelConfig:
    return config_from_gguf(reader(path), path=path, **kw)


def load_gguf(path: str, *, mesh=None, dtype: str = "float32"):
    """A ``Transformer`` with the weights of a llama / qwen2 GGUF file (dequantized)."""
    gguf = _gguf()
    r = reader(path)
    cfg = config_from_gguf(r, path=path, dtype=dtype)
    arch = metadata(r, "general.architecture", path=path)
    by_name = {}
    for t in r.tensors:
        hf = hf_name(t.name)
        if hf is None:
            if t.name.startswith("rope_freqs"):        # llama-3 scaling factors: not supported yet
                raise GGUFError(f"{path}: RoPE frequency scaling tensors ({t.name}) are not supported")
            continue
        by_name[hf] = t

    def tensor(hf):
        t = by_name[hf]
        try:
            w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        except NotImplementedError:
            raise GGUFError(f"{path}: tensor {t.name} has quant type {t.tensor_type.name}, which "
                            "the gguf package cannot dequantize") from None
        except (ValueError, IndexError) as e:
            raise GGUFError(f"{path}: tensor {t.name} ({t.tensor_type.name}) is truncated or "
                            f"corrupt: {e}") from None
        if arch == "llama" and hf.endswith(("q_proj.weight", "k_proj.weight")):
            w = unpermute(w, cfg.num_heads if "q_proj" in hf else cfg.num_kv_heads)
        return w

    return place_weights(cfg, set(by_name), tensor, source=path, mesh=mesh)
