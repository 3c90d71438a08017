"""The host text agent on a toy host env (``host_toys.Counter``, in worker processes) with a
scripted stand-in generator: prompts rendered from the record, invalid answers as no-ops,
branches re-reaching tau by reset + replay (charged), experiences shown from tau on and
absent from Stage-2 examples, the search and Pass@k through the same code."""

import json

import jax
import numpy as np
import pytest

from leafe_jax.envs.host.protocol import EnvSpec
from leafe_jax.interfaces.host import format as HF
from leafe_jax.interfaces.host.agent import HostTextAgent
from leafe_jax.interfaces.text import format as F
from leafe_jax.interfaces.text.policy import Generation
from leafe_jax.policy.tokenizer import Tokenizer

LESSON = "Lessons from your earlier attempts"


class Scripted:
    """Reads its prompt: with a lesson it answers inc; otherwise, by its key, an answer
    without an action tag, dec, or inc."""

    def __init__(self, tok):
        self.tokenizer, self.end = tok, tok.token_id("<|im_end|>")

    def generate(self, prompts, keys, *, max_new_tokens, temperature, prefix_len=0):
        out = []
        for p, k in zip(prompts, keys):
            u = float(jax.random.uniform(k))
            text = self.tokenizer.decode(p)
            if "Look back at this attempt" in text:           # reflect: malformed on even lengths
                n = text.count("\nResult: ")
                out.append(np.asarray(self.tokenizer.encode(
                    "no idea" if n % 2 == 0 else F.reflection_answer(n - 1, "count up at the end"))
                    + [self.end], np.int32))
                continue
            ans = ("<action>inc</action>" if LESSON in text or u > 0.65 else
                   "I would increment" if u < 0.15 else "<action>dec</action>")
            out.append(np.asarray(self.tokenizer.encode(ans)[: max_new_tokens - 1] + [self.end], np.int32))
        return Generation(out, [np.full(len(o), -0.5, np.float32) for o in out])


@pytest.fixture(scope="module")
def tok(smollm2_path):
    return Tokenizer.from_gguf(smollm2_path)


@pytest.fixture(scope="module")
def agent(tok, tmp_path_factory):
    a = HostTextAgent(EnvSpec("host_toys:Counter", {"marks": str(tmp_path_factory.mktemp("m"))}), tok,
                      HF.HostTextConfig(max_steps=6, history_length=2, max_new_tokens=16), workers=2)
    yield a
    a.close()


@pytest.fixture(scope="module")
def roots(agent, tok):
    s = agent.session(Scripted(tok), np.arange(4), max_depth=2, temperature=1.0)
    return s, s.roots(np.array([0, 1, 2, 3, 0, 1]), jax.random.split(jax.random.key(0), 6))


def test_prompts_are_rendered_from_the_record(agent, tok, roots):
    s, out = roots
    ep = out.episodes
    for r in range(6):
        for t in range(int(ep.num_steps[r])):
            np.testing.assert_array_equal(ep.prompt[r, t, : ep.prompt_len[r, t]],
                                          agent.fmt.ids(agent.turn_text(ep, r, t)))
    text = agent.turn_text(ep, 0, 0)
    assert text.startswith(f"Task:\ncount {ep.task[0]}\n") and "Some valid actions" not in text
    assert "Some valid actions: inc, dec" in agent.turn_text(ep, 0, 1) or not ep.stepped[0, 0]
    assert tok.decode(agent.fmt.prefix_ids).endswith(
        tok.render([{"role": "user", "content": "Reach a count of 5. Actions: inc, dec.\n\n\x00"}],
                   add_generation_prompt=True).split("\x00")[0][-20:])


def test_invalid_answers_are_no_ops_with_feedback(agent, roots):
    s, out = roots
    ep = out.episodes
    bad = [(r, t) for r in range(6) for t in range(int(ep.num_steps[r])) if not ep.stepped[r, t]]
    assert bad and s.stats["invalid"] >= len(bad)
    for r, t in bad:
        assert ep.obs_digest[r, t + 1] == ep.obs_digest[r, t]
        if t + 1 < ep.num_steps[r]:
            assert "Result: Your answer had no action" in agent.turn_text(ep, r, t + 1)
    # env steps = the steps the env took: roots roll nothing back (the pool's own replays,
    # 6 episodes on 2 workers, are its cost, not the rollouts')
    np.testing.assert_array_equal(out.env_steps, ep.stepped.sum(1))
    assert s.stats["pool_replay_steps"] > 0 and s.stats["replay_steps"] == 0
    counts = [int(agent.result_text(ep, r, int(ep.num_steps[r]) - 1).split()[1]) if ep.stepped[r, int(ep.num_steps[r]) - 1]
              else None for r in range(6)]
    for r, c in enumerate(counts):
        if c is not None:
            acts = [agent.action_text(ep, r, t) for t in range(int(ep.num_steps[r]))]
            assert c == int(ep.task[r]) + acts.count("inc") - acts.count("dec")
            assert ep.solved[r] == (c >= 5)


def test_a_branch_restores_its_parent_by_replay(agent, tok, roots):
    s, out = roots
    ep = out.episodes
    r = int(np.argmax(ep.stepped.sum(1)))
    tau = int(np.flatnonzero(ep.stepped[r])[1]) + 1 if ep.stepped[r].sum() > 1 else 1
    tau = min(tau, int(ep.num_steps[r]) - 1)
    parent = jax.tree.map(lambda x: x[r: r + 1], ep)
    exp = np.zeros((1, s.cfg.experience_tokens), np.int32)
    ids = tok.encode("count up instead")
    exp[0, : len(ids)] = np.asarray(ids) + 1
    before = dict(s.stats)
    br = s.branches(parent, np.array([tau]), exp, np.zeros((1, 1), bool), jax.random.split(jax.random.key(9), 1),
                    use_experience=True, use_mask=False)
    b = br.episodes
    for t in range(tau):                                    # the parent's prompts, unchanged
        np.testing.assert_array_equal(b.prompt[0, t, : b.prompt_len[0, t]], ep.prompt[r, t, : ep.prompt_len[r, t]])
        assert LESSON not in agent.turn_text(b, 0, t)
    assert LESSON in agent.turn_text(b, 0, tau) and "count up instead" in agent.turn_text(b, 0, tau)
    assert agent.action_text(b, 0, tau) == "inc"           # the script follows the lesson
    # the rollback costs a reset + replay of the parent's steps before tau, charged to the branch
    assert b.replay[0] == ep.stepped[r, :tau].sum() == s.stats["replay_steps"] - before["replay_steps"]
    assert br.env_steps[0] == b.stepped[0, tau:].sum() + b.replay[0]
    assert s.stats["pool_replay_steps"] - before["pool_replay_steps"] >= b.replay[0]
    with pytest.raises(ValueError, match="no forbidden-action mask"):
        s.branches(parent, np.array([tau]), exp, np.zeros((1, 1), bool), jax.random.split(jax.random.key(9), 1),
                   use_experience=True, use_mask=True)


def test_feedback_reflector_names_where_progress_stopped(agent, roots):
    s, out = roots
    ep = out.episodes
    refl = s.reflector("feedback", num_candidates=2, every=0)(ep)
    for r in range(6):
        if ep.solved[r]:
            assert (refl.tau[r] == -1).all()
            continue
        n = int(ep.num_steps[r])
        rew = [0.0] + [float(ep.reward[r, t]) for t in range(n)]
        gains = [t for t in range(n) if rew[t + 1] > rew[t]]
        want = min(gains[-1] + 1, n - 1) if gains else 0
        assert refl.tau[r, 0] == want
        assert refl.tau[r, 1] == (want - 1 if want >= 1 else -1)
        text = agent.describe_experience(refl.experience[r, 0])
        assert text.startswith(f"From step {want + 1} on") or "held no action" in text


def test_explore_and_stage2_with_the_host_agent(agent, tok):
    from leafe_jax.leafe.distill import DistillConfig, stage2_examples
    from leafe_jax.leafe.explore import ExploreConfig, explore
    cfg = ExploreConfig(budget=4, max_depth=2, children=1)
    tree = explore(agent, Scripted(tok), np.arange(4), jax.random.key(1), cfg, "rollback", progress=False,
                   stats=(st := {}))
    assert (tree.is_branch & tree.solved).any() and st["session"]["replay_steps"] > 0
    recs, ds = stage2_examples(agent, tree, DistillConfig())
    assert ds["e2p"] > 0 and ds["rehearsal"] > 0
    for toks, m in zip(recs.tokens, recs.loss_mask):
        assert LESSON not in tok.decode(toks)
        assert tok.decode(np.asarray(toks)[np.asarray(m)]).startswith("<action>")
    json.dumps(ds)


def test_pass_at_k_resumes_and_teacher_forcing_plays_demos(agent, tok, tmp_path):
    pol = Scripted(tok)
    part = str(tmp_path / "partial.npz")
    tasks = np.array([3, 2, 3, 2])                       # 2 or 3 incs away from 5
    a = agent.success(pol, tasks, 3, jax.random.key(2), progress=False, batch_size=4)
    assert a.shape == (4, 3) and a.any() and not a.all()
    agent.success(pol, tasks, 3, jax.random.key(2), progress=False, batch_size=4, checkpoint=part)
    with np.load(part) as z:                              # as if killed after the first chunk
        np.savez(part, out=np.where(np.arange(12) < 4, z["out"], False), next=4, tag=z["tag"])
    b = agent.success(pol, tasks, 3, jax.random.key(2), progress=False, batch_size=4, checkpoint=part)
    np.testing.assert_array_equal(a, b)
    s = agent.session(None, np.arange(4), max_depth=0, temperature=1.0)
    demo = s.play(np.arange(4), [["inc"] * (5 - t) for t in range(4)]).episodes
    assert demo.solved.all() and (demo.num_steps == 5 - np.arange(4)).all()
    ex = agent.sft_examples(jax.tree.map(lambda x: x[0], demo), 0, 4)
    assert len(ex) == 5 and all(tok.decode(t[m]) == "<action>inc</action><|im_end|>" for t, m in ex)


def test_the_model_reflects_on_its_host_trajectory(agent, roots):
    """The self-reflector's prompt lists the attempt's steps; parsed answers become
    candidates naming the step the model chose, malformed ones are counted, not replaced."""
    s, out = roots
    ep = out.episodes
    refl_fn = s.reflector("self", num_candidates=1, every=0)
    refl = refl_fn(ep)
    failed = [r for r in range(6) if not ep.solved[r]]
    assert failed and refl_fn.stats["asked"] == len(failed)
    for r in range(6):
        n = int(ep.num_steps[r])
        if r in failed and n % 2 == 1:
            assert refl.tau[r, 0] == n - 1
            assert agent.describe_experience(refl.experience[r, 0]) == "count up at the end"
        else:
            assert refl.tau[r, 0] == -1
    assert refl_fn.stats["malformed"] == sum(int(ep.num_steps[r]) % 2 == 0 for r in failed)
    assert refl_fn.task_tokens.sum() == refl_fn.stats["generated_tokens"] > 0


def test_valid_actions_relevant_to_the_task_come_first():
    valid = ["activate oven", "close door to hallway", "focus on water", "open door to kitchen",
             "pick up thermometer", "wait1"]
    task = "Your task is to boil water. First, focus on the substance. Use the thermometer."
    assert HF.rank_actions(valid, task, 3) == ["focus on water", "pick up thermometer", "activate oven"]
    assert HF.rank_actions(valid, "", 2) == valid[:2]
