"""Text generation with a pretrained model: prompts or chats in, text out.

Prompts (strings) or chats (lists of ``{"role", "content"}``, rendered with the model's
chat template and a generation prompt) are tokenized on the host, right-padded, and sampled
by ``sampler.generate`` (one jitted prefill + ``while_loop`` decode, bucketed lengths).
Generation stops at a stop token - by default the tokenizer's end-of-sequence token and the
token that closes an assistant turn in the chat template (``<|im_end|>`` in ChatML) - or
after ``max_new_tokens``; ``stop`` strings cut the decoded text on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leafe_jax.policy.pretrained import load_pretrained
from leafe_jax.policy.sampler import bucket, decode, extend, generate, new_cache, place_rows
from leafe_jax.policy.sampling import Greedy, TopP
from leafe_jax.policy.tokenizer import Tokenizer


@dataclass
class TextOutput:
    texts: list            # decoded continuations (special tokens and stop strings cut)
    tokens: list           # int32 arrays: the generated ids (stop token included)
    logprobs: list         # float32 arrays, one per generated token
    finished: list         # bool: ended on a stop token or a stop string


def turn_end_tokens(tok: Tokenizer) -> tuple[int, ...]:
    """The special token right after an assistant message in the chat template, if any."""
    if not tok.chat_template:
        return ()
    text = tok.render([{"role": "user", "content": "u"}, {"role": "assistant", "content": "\x00"}])
    after = text[text.rindex("\x00") + 1:]
    ids = tok.encode(after)
    special = {i for i, a in tok.tok.get_added_tokens_decoder().items() if a.special}
    return (ids[0],) if ids and ids[0] in special else ()


def default_stop_tokens(tok: Tokenizer) -> tuple[int, ...]:
    eos = () if tok.eos_token is None else (tok.token_id(tok.eos_token),)
    return tuple(sorted(set(eos) | set(turn_end_tokens(tok))))


def encode_prompts(tok: Tokenizer, prompts) -> list[list[int]]:
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(tok.encode(p))
        else:
            out.append(tok.encode(tok.render(list(p), add_generation_prompt=True)))
        if not out[-1]:
            raise ValueError("an empty prompt: nothing to condition on")
    return out


def _right_padded(rows: list[list[int]], width: int | None = None):
    """``(tokens int32 [B, width], lengths int32 [B])``, padded with 0 on the right."""
    arr = np.zeros((len(rows), width or max(len(r) for r in rows)), np.int32)
    for i, r in enumerate(rows):
        arr[i, : len(r)] = r
    return arr, np.array([len(r) for r in rows], np.int32)


def _text_output(tok: Tokenizer, out, stop: tuple[str, ...] = ()) -> TextOutput:
    """A sampler's ``SampleOutput`` as text, cut at the first stop string."""
    toks, lps, n, done = (np.asarray(x) for x in out)
    texts, finished = [], []
    for r in range(len(n)):
        text = tok.decode(toks[r, : n[r]], skip_special=True)
        cut = min((text.index(s) for s in stop if s in text), default=None)
        texts.append(text if cut is None else text[:cut])
        finished.append(bool(done[r]) or cut is not None)
    return TextOutput(texts, [toks[r, : n[r]] for r in range(len(n))],
                      [lps[r, : n[r]] for r in range(len(n))], finished)


def generate_text(model, tok: Tokenizer, prompts, key, *, max_new_tokens: int = 64,
                  strategy=Greedy(), stop: tuple[str, ...] = (), stop_tokens=None,
                  mesh=None) -> TextOutput:
    arr, lens = _right_padded(encode_prompts(tok, prompts))
    stops = default_stop_tokens(tok) if stop_tokens is None else tuple(stop_tokens)
    out = generate(model, arr, lens, key, max_new_tokens=max_new_tokens, strategy=strategy,
                   stop_tokens=stops, pad_id=0, mesh=mesh)
    return _text_output(tok, out, stop)


def chat_generate(model_name: str, messages: list[str], *, max_new_tokens: int = 64,
                  temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                  system: str | None = None, raw: bool = False, stop=()) -> TextOutput:
    """``leafe generate``: one chat per user message (or raw prompts), batched."""
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    model, tok = load_pretrained(model_name)
    sys_msg = [] if system is None else [{"role": "system", "content": system}]
    prompts = messages if raw else [sys_msg + [{"role": "user", "content": m}] for m in messages]
    strategy = Greedy() if temperature == 0 else TopP(p=top_p, temperature=temperature)
    return generate_text(model, tok, prompts, jax.random.key(seed), max_new_tokens=max_new_tokens,
                         strategy=strategy, stop=tuple(stop))


class ChatSession:
    """Multi-turn generation over one KV cache per row: a turn prefills only the tokens that
    are new since the last one. The rendered conversation must extend what the row's cache
    holds (its prompt and the tokens the model generated); a row where it does not - a reply
    that re-tokenizes differently - is prefilled afresh alone (``rows_reset`` counts them).
    ``prefilled`` counts prefilled tokens."""

    def __init__(self, model, tok: Tokenizer, *, capacity: int = 1024, mesh=None):
        if capacity > model.cfg.max_seq_len:
            raise ValueError(f"capacity {capacity} exceeds the model's max_seq_len {model.cfg.max_seq_len}")
        self.model, self.tok, self.capacity, self.mesh = model, tok, capacity, mesh
        self.cache, self.history, self.prefilled, self.fresh_starts, self.rows_reset = None, None, 0, 0, 0

    def reply(self, conversations, key, *, max_new_tokens: int = 64, strategy=Greedy(),
              stop_tokens=None) -> TextOutput:
        ids = encode_prompts(self.tok, conversations)
        B = len(ids)
        if self.history is None or len(self.history) != B:
            self.cache, self.history = new_cache(self.model, B, self.capacity, self.mesh), [[] for _ in ids]
            self.fresh_starts += 1
        keep = np.array([i[: len(h)] == h and len(i) > len(h) for i, h in zip(ids, self.history)])
        if not keep.all():                  # those rows start over (stale slots are masked)
            self.cache = self.cache.replace(lengths=jnp.where(jnp.asarray(keep), self.cache.lengths, 0))
            self.history = [h if k else [] for h, k in zip(self.history, keep)]
            self.rows_reset += int((~keep).sum())
        new = [i[len(h):] for i, h in zip(ids, self.history)]
        need = max(len(i) for i in ids) + max_new_tokens
        if need > self.capacity:
            raise ValueError(f"the conversation needs {need} cache slots; the session holds {self.capacity}")
        arr, lens = _right_padded(new, bucket(max(len(n) for n in new)))
        if self.mesh is not None:
            arr, lens = place_rows(arr, lens, self.mesh)
        graphdef, state = nnx.split(self.model)
        # attention reads only the occupied slots (a power of two: few compilations)
        attend = min(self.capacity, bucket(need, 64))
        last, self.cache = extend(graphdef, state, jnp.asarray(arr), jnp.asarray(lens), self.cache,
                                  attend_slots=attend)
        stops = default_stop_tokens(self.tok) if stop_tokens is None else tuple(stop_tokens)
        out, self.cache = decode(graphdef, state, last, self.cache, key, None,
                                 max_new_tokens=max_new_tokens, strategy=strategy,
                                 stop_tokens=stops, pad_id=0, attend_slots=attend)
        text = _text_output(self.tok, out)
        self.prefilled += int(sum(len(x) for x in new))
        self.history = [list(i) + t.tolist() for i, t in zip(ids, text.tokens)]
        return text
