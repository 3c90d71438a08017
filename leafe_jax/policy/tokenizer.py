"""Tokenizers and chat templates for pretrained language models, from well-kept libraries.

One API over two sources:

* ``Tokenizer.from_gguf(path)``: the BPE vocabulary, merges, special tokens and chat template
  in a GGUF file's metadata, built into a Hugging Face ``tokenizers.Tokenizer`` (byte-level
  BPE, as transformers' own GGUF conversion does). Pre-tokenizers: ``gpt2`` and ``smollm``
  (SmolLM2: tested against transformers); others are refused by name until tested.
* ``Tokenizer.from_hf(dir)``: ``tokenizer.json`` (+ ``tokenizer_config.json`` for the special
  tokens and the chat template).

Chat templates are the model's own Jinja templates, rendered in jinja2's immutable sandbox
(as transformers does: ``trim_blocks``, ``lstrip_blocks``). ``encode_chat`` also returns which
tokens belong to assistant messages (the loss mask of chat SFT). ChatML has no generation
markers, so the spans are found by rendering prefixes: an assistant message i spans from the
end of ``render(messages[:i], add_generation_prompt=True)`` to the end of
``render(messages[:i + 1])`` (its content, its end-of-turn marker and the newline after it);
a token is in the span when it overlaps it (a byte-level BPE token can carry the template's
space before the content: " left" after "assistant:").
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

from leafe_jax.policy.gguf import metadata, reader

CONTROL = 3                      # GGUF token_type of special (control) tokens
BYTE_LEVEL_PRE = ("gpt2", "smollm")


class TokenizerError(ValueError):
    pass


def _raise(msg):
    raise TemplateError(msg)


@dataclass
class Tokenizer:
    tok: HFTokenizer
    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    source: str = ""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_gguf(cls, path: str) -> "Tokenizer":
        r = reader(path)
        kind = metadata(r, "tokenizer.ggml.model", path=path)
        if kind != "gpt2":
            raise TokenizerError(f"{path}: tokenizer model {kind!r} is not supported (byte-level "
                                 "BPE, 'gpt2', is)")
        pre = metadata(r, "tokenizer.ggml.pre", "default", path=path)
        if pre not in BYTE_LEVEL_PRE + ("default",):
            raise TokenizerError(f"{path}: pre-tokenizer {pre!r} is not supported yet (supported: "
                                 f"{', '.join(BYTE_LEVEL_PRE)})")
        tokens = metadata(r, "tokenizer.ggml.tokens", path=path)
        merges = [tuple(m.split(" ", 1)) for m in metadata(r, "tokenizer.ggml.merges", path=path)]
        types = metadata(r, "tokenizer.ggml.token_type", [1] * len(tokens), path=path)
        tok = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                     fuse_unk=False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, ty in zip(tokens, types) if ty == CONTROL])
        def name(key):
            i = int(metadata(r, key, -1, path=path))
            return None if i == -1 else tokens[i]
        return cls(tok, metadata(r, "tokenizer.chat_template", "", path=path) or None,
                   name("tokenizer.ggml.bos_token_id"), name("tokenizer.ggml.eos_token_id"), path)

    @classmethod
    def from_hf(cls, path: str) -> "Tokenizer":
        f = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(f):
            raise FileNotFoundError(f"{path}: no tokenizer.json")
        try:
            tok = HFTokenizer.from_file(f)
        except Exception as e:           # the Rust library raises its own exception type
            raise TokenizerError(f"{f}: unreadable tokenizer ({e})") from None
        conf = {}
        cf = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(cf):
            try:
                with open(cf) as fh:
                    conf = json.load(fh)
            except json.JSONDecodeError as e:
                raise TokenizerError(f"{cf}: not valid JSON ({e})") from None
        tokname = lambda v: v.get("content") if isinstance(v, dict) else v
        return cls(tok, conf.get("chat_template"), tokname(conf.get("bos_token")),
                   tokname(conf.get("eos_token")), path)

    def save(self, path: str) -> None:
        """``tokenizer.json`` + ``tokenizer_config.json`` (special tokens, chat template): a
        directory transformers' ``AutoTokenizer`` and ``Tokenizer.from_hf`` read back."""
        os.makedirs(path, exist_ok=True)
        self.tok.save(os.path.join(path, "tokenizer.json"))
        conf = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": self.bos_token,
                "eos_token": self.eos_token, "chat_template": self.chat_template,
                "clean_up_tokenization_spaces": False}
        with open(os.path.join(path, "tokenizer_config.json"), "w") as fh:
            json.dump({k: v for k, v in conf.items() if v is not None}, fh, indent=1)

    # ------------------------------------------------------------------ tokens
    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        i = self.tok.token_to_id(token)
        if i is None:
            raise TokenizerError(f"{self.source}: no token {token!r}")
        return i

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, *, skip_special: bool = False) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def check_model(self, vocab_size: int, *, model: str = "the model") -> None:
        """Refuse a tokenizer whose ids do not fit the model's embedding table."""
        if self.vocab_size > vocab_size:
            raise TokenizerError(f"{self.source}: {self.vocab_size} tokens, but {model} embeds only "
                                 f"{vocab_size}: tokenizer and model do not match")

    # ------------------------------------------------------------------ chats
    def render(self, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
        if not self.chat_template:
            raise TokenizerError(f"{self.source}: no chat template")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    def encode_chat(self, messages: list[dict], *, add_generation_prompt: bool = False):
        """``(ids int32 [L], assistant bool [L])``: the rendered conversation's tokens and which
        of them belong to assistant messages (see the module docstring for the method)."""
        text = self.render(messages, add_generation_prompt=add_generation_prompt)
        spans = []
        for i, m in enumerate(messages):
            if m.get("role") == "assistant":
                start = len(self.render(messages[:i], add_generation_prompt=True))
                end = len(self.render(messages[: i + 1]))
                if text[:end] != self.render(messages[: i + 1]):
                    raise TokenizerError(f"{self.source}: the chat template does not render "
                                         "conversations prefix by prefix; assistant spans unknown")
                spans.append((start, end))
        enc = self.tok.encode(text, add_special_tokens=False)
        off = np.array(enc.offsets, np.int64).reshape(-1, 2)
        mask = np.zeros(len(enc.ids), bool)
        for a, b in spans:
            mask |= (off[:, 1] > a) & (off[:, 0] < b)
        return np.asarray(enc.ids, np.int32), mask
