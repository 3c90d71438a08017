"""The text base policy: a pretrained instruct model, optionally warmed up by behaviour
cloning in the agent's own chat format, and a reflection warm-up.

* ``bc_records``: the exact solver's optimal solution of each demo-pool level, played
  through the text loop by teacher forcing (``TextSession.play``), so every example is a
  prompt exactly as the policy will see it -> ``<action>word</action>`` + end of turn.
* ``reflection_records``: the policy's own on-policy failures on demo-pool levels, each
  answered as the feedback reflector would (``format.reflection_answer``: the 1-based step
  it takes back and its experience in words) - a 135 M model does not write this format
  zero-shot. ``reflection_quality`` measures, before and after, how often the policy's own
  answer parses and names the feedback reflector's step.
* ``warm_up``: fine-tune on them with the shared SFT loop (resumable); the result is saved
  as a checkpoint + its tokenizer (``load_text_policy`` reads it back; a model name or
  path instead gives the pretrained model as it is - the zero-shot base).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from leafe_jax.configs import config, field
from leafe_jax.data.store import SftRecords, write_sft
from leafe_jax.envs.sokoban.level import Level
from leafe_jax.envs.sokoban.solver import solve
from leafe_jax.interfaces.text import format as F
from leafe_jax.interfaces.text.policy import LMPolicy
from leafe_jax.train.sft import SFTConfig, finetune

BC_SOURCE, REFLECT_SOURCE = "demo", "reflection"


@config
class TextPretrainConfig:
    """The text base policy (the pipeline's ``[text.base]``)."""
    demo_levels: int = field(64, lo=0, doc="demo-pool levels solved for the BC warm-up (0: zero-shot)")
    sft: SFTConfig = SFTConfig(steps=40, batch_size=4, learning_rate=5e-5)
    reflection_levels: int = field(0, lo=0, doc="demo-pool levels whose on-policy failures teach "
                                                "the reflection format (0: none)")
    max_nodes: int = field(200_000, lo=1000, doc="solver node limit per demo level")


def solutions(levels: Level, height: int, width: int, max_nodes: int) -> list:
    """The optimal action sequence of each level (None where the solver gave up)."""
    lv = jax.tree.map(np.asarray, levels)
    out = []
    for i in range(len(lv.player)):
        r = solve(Level(grid=lv.grid[i], player=lv.player[i]), height, width, max_nodes=max_nodes)
        out.append(list(r.actions) if r.solved else None)
    return out


def num_tasks(tasks) -> int:
    """How many tasks: Sokoban levels (a ``Level`` batch) or a host env's task indices."""
    return int(np.shape(tasks.player)[0]) if hasattr(tasks, "player") else len(tasks)


def bc_records(agent, levels: Level, *, max_nodes: int = 200_000) -> tuple[SftRecords, dict]:
    """Chat examples of the optimal solutions (one per turn; see the module docstring)."""
    sol = solutions(levels, agent.env.height, agent.env.width, max_nodes)
    keep = np.array([s is not None and len(s) <= agent.max_steps for s in sol])
    if not keep.any():
        raise ValueError("the solver solved none of the demo levels within the step limit")
    idx = np.flatnonzero(keep)
    session = agent.session(None, jax.tree.map(lambda x: x[idx], levels), max_depth=0, temperature=1.0)
    out = session.play(np.arange(len(idx)), [sol[i] for i in idx])
    ep = out.episodes
    if not ep.solved.all():
        raise AssertionError("a demonstration did not solve its level: the text loop and the "
                             "solver disagree")
    ex = []
    for r in range(len(idx)):
        one = jax.tree.map(lambda x: x[r], ep)
        ex += agent.sft_examples(one, 0, int(one.num_steps) - 1)
    recs = SftRecords.build([t for t, _ in ex], [m for _, m in ex], source=BC_SOURCE)
    return recs, {"levels": int(len(sol)), "solved_by_solver": int(keep.sum()),
                  "examples": len(ex), "mean_solution": float(np.mean([len(sol[i]) for i in idx]))}


def _failures(agent, policy, levels: Level, key, temperature: float):
    """One on-policy rollout per level and the feedback reflector's answer to each."""
    B = num_tasks(levels)
    session = agent.session(policy, levels, max_depth=1, temperature=temperature)
    out = session.roots(np.arange(B), jax.random.split(key, B))
    refl = session.reflector("feedback", num_candidates=1, every=0)(out.episodes)
    return session, out.episodes, refl


def reflection_records(agent, policy, levels: Level, key, *, temperature: float = 1.0):
    """(reflection prompt of a failed episode -> the feedback reflector's answer) examples;
    ``(records or None, stats)``."""
    session, ep, refl = _failures(agent, policy, levels, key, temperature)
    reflect = session.reflector("self", num_candidates=1, every=0)
    fmt = agent.fmt
    toks, masks = [], []
    for r in np.flatnonzero(~ep.solved):
        tau = int(refl.tau[r, 0])
        answer = F.reflection_answer(None if tau < 0 else tau,
                                     agent.describe_experience(refl.experience[r, 0]))
        prompt = fmt.prefix_ids + fmt.ids(reflect.prompt(ep, r))
        resp = fmt.tok.encode(answer) + fmt.end_ids
        toks.append(np.asarray(prompt + resp, np.int32))
        masks.append(np.arange(len(prompt) + len(resp)) >= len(prompt))
    stats = {"episodes": int(len(ep.solved)), "failures": len(toks),
             "labelled_rollback": int((refl.tau[~ep.solved, 0] >= 0).sum())}
    return (SftRecords.build(toks, masks, source=REFLECT_SOURCE) if toks else None), stats


def reflection_quality(agent, policy, levels: Level, key, *, temperature: float = 1.0) -> dict:
    """The policy's own reflections on its failures: how often they parse, and how often
    the step they name is the feedback reflector's."""
    session, ep, refl = _failures(agent, policy, levels, key, temperature)
    own = session.reflector("self", num_candidates=1, every=0)
    mine = own(ep)
    failed = ~ep.solved & (ep.num_steps > 0)
    st = dict(own.stats)
    agree = (mine.tau[:, 0] == refl.tau[:, 0]) & (mine.tau[:, 0] >= 0) & failed
    return st | {"parse_rate": st["ok"] / max(1, st["asked"]),
                 "agreement": float(agree.sum() / max(1, failed.sum()))}


def save_tokenizer(tok, workdir: str) -> None:
    tok.save(os.path.join(workdir, "tokenizer"))


def load_text_policy(path: str, *, mesh=None, dtype: str | None = None) -> LMPolicy:
    """A warmed-up text policy (a directory with ``checkpoints/`` and ``tokenizer/``), or a
    pretrained model by name / path (the zero-shot base), placed on ``mesh`` (episodes over
    its batch axes, weights by the model's sharding rules) in the dtype policy ``dtype``
    (``auto``: by platform; ``None``: a checkpoint as saved, a pretrained model in float32)."""
    from leafe_jax.policy.pretrained import load_pretrained
    from leafe_jax.train.checkpoint import load_policy
    if os.path.isdir(os.path.join(path, "checkpoints")):
        model, meta = load_policy(path, mesh=mesh, dtype=dtype)
        return LMPolicy(model, _checkpoint_tokenizer(path, meta), name=meta.get("source", path), mesh=mesh)
    model, tok = load_pretrained(path, mesh=mesh, dtype=dtype or "float32")
    return LMPolicy(model, tok, name=path, mesh=mesh)


def _checkpoint_tokenizer(path: str, meta: dict):
    from leafe_jax.policy.tokenizer import Tokenizer
    tok_dir = os.path.join(path, meta.get("tokenizer", "tokenizer"))
    if not os.path.isdir(tok_dir):
        raise FileNotFoundError(f"{path}: a text policy without its tokenizer ({tok_dir})")
    return Tokenizer.from_hf(tok_dir)


def load_text_tokenizer(path: str):
    """The tokenizer of what ``load_text_policy(path)`` would load, without its weights."""
    from leafe_jax.policy.pretrained import resolve
    from leafe_jax.policy.tokenizer import Tokenizer
    from leafe_jax.train.checkpoint import Checkpointer
    if os.path.isdir(os.path.join(path, "checkpoints")):
        ck = Checkpointer(os.path.join(path, "checkpoints"))
        try:
            return _checkpoint_tokenizer(path, ck.metadata())
        finally:
            ck.close()
    local = resolve(path)
    return Tokenizer.from_gguf(local) if local.endswith(".gguf") else Tokenizer.from_hf(local)


def warm_up(agent, policy: LMPolicy, demo: Level, cfg: TextPretrainConfig, workdir: str, *,
            seed: int, key, progress: bool = True, mesh=None) -> dict:
    """BC (+ reflection) warm-up of ``policy`` in place; writes ``workdir/data`` (kept on a
    resume), checkpoints, the tokenizer and ``warmup.json``; returns its stats."""
    os.makedirs(workdir, exist_ok=True)
    stats_file = os.path.join(workdir, "warmup.json")
    data_dir = os.path.join(workdir, "data")
    if os.path.exists(os.path.join(data_dir, "stats.json")):
        with open(os.path.join(data_dir, "stats.json")) as fh:
            stats = json.load(fh)
    else:
        levels = jax.tree.map(lambda x: x[: cfg.demo_levels], demo)
        # an agent with demonstrations of its own (a host env's gold paths) brings its records
        own = getattr(agent, "bc_records", None)
        recs, stats = own(levels) if own is not None else bc_records(agent, levels, max_nodes=cfg.max_nodes)
        if cfg.reflection_levels:
            rl = jax.tree.map(lambda x: x[: cfg.reflection_levels], demo)
            stats["reflection_before"] = reflection_quality(agent, policy, rl, jax.random.fold_in(key, 1))
            rrec, stats["reflection_data"] = reflection_records(agent, policy, rl, jax.random.fold_in(key, 2))
            if rrec is not None:
                recs = recs.concat(rrec)
        write_sft(recs, data_dir, overwrite=True)
        stats["max_len"] = int(max(len(t) for t in recs.tokens))
        stats["max_targets"] = int(max(int(m.sum()) for m in recs.loss_mask))
        with open(os.path.join(data_dir, "stats.json"), "w") as fh:
            json.dump(stats, fh)
    meta = {"model": policy.model.cfg.to_dict(), "source": policy.name, "tokenizer": "tokenizer",
            "agent": "text", "seed": seed}
    save_tokenizer(policy.tokenizer, workdir)
    metrics = finetune(policy.model, data_dir, cfg.sft, workdir, seed=seed, max_len=None,
                       progress=progress, mesh=mesh, meta=meta, max_targets=stats["max_targets"])
    policy._prefix = None                     # the weights changed: recompute the prefix cache
    if cfg.reflection_levels:
        rl = jax.tree.map(lambda x: x[: cfg.reflection_levels], demo)
        stats["reflection_after"] = reflection_quality(agent, policy, rl, jax.random.fold_in(key, 1))
    with open(stats_file, "w") as fh:
        json.dump(stats | {"final": {k: float(v) for k, v in (metrics or {}).items()
                                     if isinstance(v, (int, float))}}, fh, indent=1)
    return stats
