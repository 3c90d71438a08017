"""Hugging Face checkpoints (Qwen2 / Qwen2.5, Llama-3.x): load into ``Transformer``, export.

``load_hf(dir)`` reads ``config.json`` and ``model.safetensors`` or a sharded
``model.safetensors.index.json``, checks every name and shape against the model, and
places each tensor directly with its target sharding. ``save_hf`` writes them back.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import nnx

from leafe_jax.policy import safetensors_io as st
from leafe_jax.policy.config import ModelConfig, RopeScaling, dtype_pair
from leafe_jax.policy.model import Transformer, abstract_model
from leafe_jax.sharding import single_device_mesh


class CheckpointError(ValueError):
    pass


_INT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")


def config_from_hf(hf: dict, *, name: str = "hf", dtype: str | None = None) -> ModelConfig:
    if not isinstance(hf, dict):
        raise CheckpointError(f"config is not a JSON object: {type(hf).__name__}")
    missing = [k for k in _INT_KEYS if k not in hf]
    if missing:
        raise CheckpointError(f"missing key(s) {missing}")
    for k in _INT_KEYS + ("num_key_value_heads", "head_dim", "max_position_embeddings"):
        v = hf.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise CheckpointError(f"{k} must be an integer, got {v!r}")
    for k in ("rope_theta", "rms_norm_eps"):
        v = hf.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise CheckpointError(f"{k} must be a number, got {v!r}")
    mt = hf.get("model_type")
    if mt not in ("qwen2", "llama"):
        raise CheckpointError(f"unsupported model_type {mt!r} (supported: qwen2, llama)")
    rs = hf.get("rope_scaling") or hf.get("rope_parameters")
    scaling = None
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        scaling = RopeScaling(factor=rs["factor"], low_freq_factor=rs["low_freq_factor"],
                              high_freq_factor=rs["high_freq_factor"],
                              original_max_position_embeddings=rs["original_max_position_embeddings"])
    elif rs and rs.get("rope_type", rs.get("type")) not in (None, "default"):
        raise CheckpointError(f"unsupported rope scaling {rs}")
    theta = hf.get("rope_theta", (rs or {}).get("rope_theta", 10000.0))
    heads = hf["num_attention_heads"]
    qkv_bias = mt == "qwen2" or bool(hf.get("attention_bias", False))
    tdt = hf.get("torch_dtype", hf.get("dtype", "float32"))
    dt = "bfloat16" if tdt == "bfloat16" else "float32"
    pd, cd = dtype_pair(dtype) if dtype else (dt, dt)      # a dtype policy name, or the file's
    return ModelConfig(name=name, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                       intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
                       num_heads=heads, num_kv_heads=hf.get("num_key_value_heads", heads),
                       head_dim=hf.get("head_dim"), rope_theta=float(theta), rope_scaling=scaling,
                       rms_norm_eps=hf.get("rms_norm_eps", 1e-6), qkv_bias=qkv_bias,
                       tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                       max_seq_len=hf.get("max_position_embeddings", 2048),
                       param_dtype=pd, dtype=cd)


def config_to_hf(cfg: ModelConfig, model_type: str) -> dict:
    out = {"model_type": model_type, "architectures": [
        "Qwen2ForCausalLM" if model_type == "qwen2" else "LlamaForCausalLM"],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.hd, "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings, "max_position_embeddings": cfg.max_seq_len,
        "torch_dtype": cfg.param_dtype, "hidden_act": "silu"}
    if model_type == "llama":
        out["attention_bias"] = cfg.qkv_bias
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        out["rope_scaling"] = {"rope_type": "llama3", "factor": s.factor,
                               "low_freq_factor": s.low_freq_factor,
                               "high_freq_factor": s.high_freq_factor,
                               "original_max_position_embeddings": s.original_max_position_embeddings}
    return out


def name_map(cfg: ModelConfig) -> dict[str, tuple[tuple, bool]]:
    """HF tensor name -> (our nnx state path, transpose?)."""
    m = {"model.embed_tokens.weight": (("embed", "embedding"), False),
         "model.norm.weight": (("final_norm", "scale"), False)}
    if not cfg.tie_embeddings:
        m["lm_head.weight"] = (("lm_head", "kernel"), True)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        for hf_n, ours in (("self_attn.q_proj", ("attn", "q")), ("self_attn.k_proj", ("attn", "k")),
                           ("self_attn.v_proj", ("attn", "v")), ("self_attn.o_proj", ("attn", "o")),
                           ("mlp.gate_proj", ("mlp", "gate")), ("mlp.up_proj", ("mlp", "up")),
                           ("mlp.down_proj", ("mlp", "down"))):
            m[p + hf_n + ".weight"] = (("layers", i) + ours + ("kernel",), True)
            if cfg.qkv_bias and hf_n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                m[p + hf_n + ".bias"] = (("layers", i) + ours + ("bias",), False)
        m[p + "input_layernorm.weight"] = (("layers", i, "attn_norm", "scale"), False)
        m[p + "post_attention_layernorm.weight"] = (("layers", i, "mlp_norm", "scale"), False)
    return m


def _tensor_files(path: str) -> dict[str, str]:
    """tensor name -> file holding it."""
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(index):
        with open(index) as fh:
            wm = json.load(fh)["weight_map"]
        missing = sorted({f for f in wm.values() if not os.path.isfile(os.path.join(path, f))})
        if missing:
            raise CheckpointError(f"{path}: index names missing shard files {missing}")
        return {k: os.path.join(path, v) for k, v in wm.items()}
    if os.path.isfile(single):
        header, _ = st.read_header(single)
        return {k: single for k in header}
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")


def load_hf(path: str, *, mesh=None, dtype: str | None = None) -> Transformer:
    """Load an HF Qwen2 / Llama checkpoint directory into a sharded ``Transformer``."""
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise FileNotFoundError(f"{path}: no config.json (not a Hugging Face checkpoint?)")
    try:
        with open(cfg_file) as fh:
            hf = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    try:
        cfg = config_from_hf(hf, name=os.path.basename(os.path.normpath(path)), dtype=dtype)
    except CheckpointError as e:
        raise CheckpointError(f"{cfg_file}: {e}") from None
    files = _tensor_files(path)
    opened: dict[str, dict] = {}

    def tensor(name):
        f = files[name]
        if f not in opened:
            opened[f] = st.read(f)
        return opened[f][name]
    return place_weights(cfg, set(files), tensor, source=path, mesh=mesh)


def place_weights(cfg: ModelConfig, available: set, tensor, *, source: str, mesh=None) -> Transformer:
    """A ``Transformer`` of ``cfg`` whose weights are ``tensor(hf_name)`` (numpy, HF layout),
    placed with the model's shardings; ``available`` is every tensor name the source holds.
    Missing or unexpected tensors and wrong shapes are errors naming ``source``."""
    mesh = mesh or single_device_mesh()
    graphdef, abs_state = abstract_model(cfg, mesh)
    names = name_map(cfg)
    unexpected = sorted(set(available) - set(names))
    # tied checkpoints sometimes carry lm_head.weight as well: accept and ignore it
    unexpected = [u for u in unexpected if not (cfg.tie_embeddings and u == "lm_head.weight")]
    missing = sorted(set(names) - set(available))
    if missing or unexpected:
        raise CheckpointError(f"{source}: checkpoint does not match the {cfg.num_layers}-layer "
                              f"config: missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                              f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
    flat = dict(nnx.to_flat_state(abs_state))
    for hf_name, (ours, transpose) in names.items():
        arr = tensor(hf_name)
        if transpose:
            arr = arr.T
        target = flat[ours]
        if tuple(arr.shape) != tuple(target.shape):
            raise CheckpointError(f"{source}: {hf_name} has shape {tuple(arr.shape)} "
                                  f"(after transpose: {transpose}); the model expects {tuple(target.shape)}")
        target.set_value(jax.device_put(np.asarray(arr).astype(target.dtype), target.sharding))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def save_hf(model: Transformer, path: str, *, model_type: str | None = None) -> None:
    """Export params (gathered to host) as ``model.safetensors`` + ``config.json``."""
    cfg = model.cfg
    model_type = model_type or ("qwen2" if cfg.qkv_bias else "llama")
    os.makedirs(path, exist_ok=True)
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    tensors = {}
    for hf_name, (ours, transpose) in name_map(cfg).items():
        arr = np.asarray(jax.device_get(flat[ours].get_value()))
        tensors[hf_name] = np.ascontiguousarray(arr.T if transpose else arr)
    st.write(os.path.join(path, "model.safetensors"), tensors, {"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(config_to_hf(cfg, model_type), fh, indent=1)
