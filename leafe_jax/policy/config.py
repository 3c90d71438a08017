"""Typed, frozen model configs and presets (test-tiny ... Qwen2.5-72B / Llama-3.1-70B)."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """Llama-3.1 ``rope_scaling`` (``rope_type = "llama3"``)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A decoder of the Llama / Qwen2 family. Shapes: V vocab, D hidden, F mlp, H heads."""

    name: str = "custom"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None          # default hidden_size // num_heads
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False               # Qwen2: True
    tie_embeddings: bool = False
    max_seq_len: int = 2048
    param_dtype: str = "float32"         # "float32" | "bfloat16"
    dtype: str = "float32"               # compute dtype
    remat: bool = False                  # recompute each block's activations in the backward pass
    scan_layers: bool = False            # full forward: lax.scan over the blocks (MaxText's
                                         # scan_layers): one layer's gathered weights live at a time
    window_segments: int = 0             # > 0: a token sees its own segment, the window_segments
                                         # before it and segment 0 (the task); 0: everything
    segment_tokens: tuple[int, ...] = ()  # each of these tokens opens a new segment

    def __post_init__(self):
        for f in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                  "num_kv_heads", "max_seq_len"):
            if getattr(self, f) < 1:
                raise ValueError(f"{self.name}: {f} must be >= 1, got {getattr(self, f)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.name}: num_heads {self.num_heads} is not a multiple of "
                             f"num_kv_heads {self.num_kv_heads}")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(f"{self.name}: hidden_size {self.hidden_size} not divisible by "
                             f"num_heads {self.num_heads}; set head_dim")
        if self.hd % 2:
            raise ValueError(f"{self.name}: head_dim must be even for RoPE, got {self.hd}")
        for f in ("param_dtype", "dtype"):
            if getattr(self, f) not in ("float32", "bfloat16"):
                raise ValueError(f"{self.name}: {f} must be 'float32' or 'bfloat16'")
        if self.window_segments < 0:
            raise ValueError(f"{self.name}: window_segments must be >= 0, got {self.window_segments}")
        if self.window_segments and not self.segment_tokens:
            raise ValueError(f"{self.name}: window_segments = {self.window_segments} needs "
                             "segment_tokens (the tokens that open a segment)")
        if not isinstance(self.segment_tokens, tuple):
            object.__setattr__(self, "segment_tokens", tuple(int(t) for t in self.segment_tokens))

    @property
    def hd(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    def num_params(self) -> int:
        D, F, V, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_layers
        q = D * self.num_heads * self.hd
        kv = 2 * D * self.num_kv_heads * self.hd
        o = self.num_heads * self.hd * D
        bias = (self.num_heads + 2 * self.num_kv_heads) * self.hd if self.qkv_bias else 0
        per_layer = q + kv + o + bias + 3 * D * F + 2 * D
        return L * per_layer + V * D * (1 if self.tie_embeddings else 2) + D

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        """JSON-ready dict (``rope_scaling`` nested); ``from_dict`` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}")
        if d.get("rope_scaling") is not None:
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        return cls(**d)


DTYPE_POLICIES = {
    "float32": ("float32", "float32"),        # CPU: bf16 matmuls are slower there
    "bf16-mixed": ("float32", "bfloat16"),    # TPU/GPU training: f32 master weights, bf16 compute
    "bfloat16": ("bfloat16", "bfloat16"),     # inference / memory-bound sampling
}


def dtype_pair(policy: str | None = None, platform: str | None = None) -> tuple[str, str]:
    """``(param_dtype, dtype)`` of a named policy; ``None`` or ``"auto"`` picks by platform
    (``float32`` on CPU, ``bf16-mixed`` on TPU/GPU)."""
    if policy in (None, "auto"):
        import jax
        platform = platform or jax.default_backend()
        policy = "float32" if platform == "cpu" else "bf16-mixed"
    if policy not in DTYPE_POLICIES:
        raise ValueError(f"unknown dtype policy {policy!r}; known: auto, {', '.join(DTYPE_POLICIES)}")
    return DTYPE_POLICIES[policy]


def with_dtype_policy(cfg: ModelConfig, policy: str | None = None, platform: str | None = None):
    """``cfg`` with (param_dtype, dtype) from a named policy (``dtype_pair``)."""
    pd, cd = dtype_pair(policy, platform)
    return cfg.replace(param_dtype=pd, dtype=cd)


_LLAMA31 = RopeScaling()

PRESETS = {c.name: c for c in [
    ModelConfig(name="test-tiny", vocab_size=64, hidden_size=32, intermediate_size=64,
                num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=128, tie_embeddings=True),
    # Sokoban policies trained from scratch (symbolic interface, ~1-3M parameters).
    ModelConfig(name="sokoban-tiny", vocab_size=64, hidden_size=32, intermediate_size=64,
                num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=1024, tie_embeddings=True),
    ModelConfig(name="sokoban-small", vocab_size=128, hidden_size=192, intermediate_size=512,
                num_layers=4, num_heads=6, num_kv_heads=2, max_seq_len=1024,
                tie_embeddings=True),
    ModelConfig(name="sokoban-100m", vocab_size=128, hidden_size=768, intermediate_size=3072,
                num_layers=12, num_heads=12, num_kv_heads=4, max_seq_len=2048,
                tie_embeddings=True),
    # The embedded SmolLM2-135M-Instruct's architecture (its weights: policy/pretrained.py);
    # random weights of this shape measure decode where the GGUF file is not at hand.
    ModelConfig(name="smollm2-135m", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                num_layers=30, num_heads=9, num_kv_heads=3, rope_theta=100_000.0,
                rms_norm_eps=1e-5, tie_embeddings=True, max_seq_len=8192),
    ModelConfig(name="qwen2.5-0.5b", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                num_layers=24, num_heads=14, num_kv_heads=2, rope_theta=1_000_000.0,
                qkv_bias=True, tie_embeddings=True, max_seq_len=32768, param_dtype="bfloat16",
                dtype="bfloat16"),
    ModelConfig(name="qwen2.5-1.5b", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                num_layers=28, num_heads=12, num_kv_heads=2, rope_theta=1_000_000.0,
                qkv_bias=True, tie_embeddings=True, max_seq_len=32768, param_dtype="bfloat16",
                dtype="bfloat16"),
    ModelConfig(name="qwen2.5-7b", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                num_layers=28, num_heads=28, num_kv_heads=4, rope_theta=1_000_000.0,
                qkv_bias=True, max_seq_len=32768, param_dtype="bfloat16", dtype="bfloat16"),
    ModelConfig(name="qwen2.5-72b", vocab_size=152064, hidden_size=8192, intermediate_size=29568,
                num_layers=80, num_heads=64, num_kv_heads=8, rope_theta=1_000_000.0,
                qkv_bias=True, max_seq_len=32768, param_dtype="bfloat16", dtype="bfloat16"),
    ModelConfig(name="llama3.1-8b", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                num_layers=32, num_heads=32, num_kv_heads=8, rope_theta=500_000.0,
                rope_scaling=_LLAMA31, rms_norm_eps=1e-5, max_seq_len=131072,
                param_dtype="bfloat16", dtype="bfloat16"),
    ModelConfig(name="llama3.1-70b", vocab_size=128256, hidden_size=8192, intermediate_size=28672,
                num_layers=80, num_heads=64, num_kv_heads=8, rope_theta=500_000.0,
                rope_scaling=_LLAMA31, rms_norm_eps=1e-5, max_seq_len=131072,
                param_dtype="bfloat16", dtype="bfloat16"),
]}


def get_config(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}") from None


def rope_inv_freq(cfg: ModelConfig):
    """Inverse frequencies [head_dim / 2] (numpy float64), with Llama-3.1 scaling if set."""
    import numpy as np

    hd = cfg.hd
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    s = cfg.rope_scaling
    if s is None:
        return inv
    low_wl = s.original_max_position_embeddings / s.low_freq_factor
    high_wl = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wl, inv / s.factor, inv)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
    return np.where(medium, smoothed, scaled)
