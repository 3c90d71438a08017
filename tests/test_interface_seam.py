"""The agent-interface seam, proven by a second implementation: a host-side text environment
(a corridor with a pit, no snapshots: rollback is reset + replay, checked and charged) and a
scripted stand-in policy, run through the same pipeline stages as the symbolic agent
(Stage-1 search, Stage-2 dataset, Pass@k evaluation, rendered trees)."""

import json
from typing import NamedTuple

import jax
import numpy as np
import pytest

from leafe_jax.data.store import sft_source
from leafe_jax.interfaces.protocol import FEEDBACK_REFLECTOR, Reflection, Rollouts
from leafe_jax.leafe.tree import load_tree
from leafe_jax.pipeline import config as C
from leafe_jax.pipeline import runners

T = 6                    # max steps
WORDS = ("left", "right")


class TextEpisode(NamedTuple):
    actions: np.ndarray      # int32 [..., T]  -1 after the end
    pos: np.ndarray          # int32 [..., T+1] observation = position before action t
    solved: np.ndarray
    num_steps: np.ndarray
    start: np.ndarray
    exp_step: np.ndarray     # step whose action saw the experience (-1: none)
    task: np.ndarray         # which task (a host env restarts from it: reset + replay)


def observe(pos, goal) -> str:
    return f"you are at {pos}; the exit is at {goal}; "


def env_step(pos, action_text, task):
    """-> new position, done, solved, feedback text (host-side, text in / text out)."""
    goal, pit = task
    word = action_text.strip().lower()
    if word not in WORDS:
        return pos, False, False, "invalid action: nothing happened"
    pos = max(0, pos + (1 if word == "right" else -1))
    if pos == pit:
        return pos, True, False, "you fell into the pit"
    return pos, pos == goal, pos == goal, "ok"


def scripted_policy(obs: str, avoid: str | None, u: float) -> str:
    """Stand-in for a language model: mostly right, sometimes left; follows an experience."""
    word = "right" if u < 0.75 else "left"
    if avoid == word:
        word = "left" if word == "right" else "right"
    return word


class Session:
    experience_shape, num_actions = (2,), 2
    restores_by_snapshot = False          # reset + replay, charged to env_steps here

    def __init__(self, tasks):
        self.tasks = np.asarray(tasks)
        self.num_tasks = len(self.tasks)
        self.replay_steps = 0

    def _play(self, task, key, prefix_actions, avoid_at=-1, avoid=None):
        goal, pit = self.tasks[task]
        acts = np.full(T, -1, np.int32)
        pos = np.zeros(T + 1, np.int32)
        p, steps, solved, done = 0, 0, False, False
        for t, a in enumerate(prefix_actions):          # reset + replay of the prefix
            p, done, solved, _ = env_step(p, WORDS[a], (goal, pit))
            acts[t], pos[t + 1] = a, p
            steps = t + 1
        u = np.asarray(jax.random.uniform(key, (T,)))
        while not done and steps < T:
            t = steps
            word = scripted_policy(observe(p, goal), avoid if t == avoid_at else None, u[t])
            p, done, solved, _ = env_step(p, word, (goal, pit))
            acts[t], pos[t + 1] = WORDS.index(word), p
            steps += 1
        pos[steps + 1:] = p
        return acts, pos, solved, steps

    def _rollouts(self, rows, task, start, exp_step, replayed):
        acts, pos, solved, steps = map(np.array, zip(*rows))
        eps = TextEpisode(acts, pos, solved, steps.astype(np.int32), np.asarray(start, np.int32),
                          np.asarray(exp_step, np.int32), np.asarray(task, np.int32))
        own = steps - np.asarray(start)
        return Rollouts(eps, own + np.asarray(replayed), 10 * own)

    def roots(self, task, keys, start_experience=None):
        rows = [self._play(b, k, []) for b, k in zip(task, keys)]
        return self._rollouts(rows, task, np.zeros(len(task)), -np.ones(len(task)), np.zeros(len(task)))

    def branches(self, parents, tau, experience, forbidden, keys, *, use_experience, use_mask):
        rows = []
        for i, (t, e, k) in enumerate(zip(tau, experience, keys)):
            b, prefix = int(parents.task[i]), list(parents.actions[i, :t])
            row = self._play(b, k, prefix, avoid_at=t, avoid=WORDS[int(e[0])] if use_experience else None)
            # the replayed observations must equal the stored ones: never a silent divergence
            if not np.array_equal(row[1][: t + 1], parents.pos[i, : t + 1]):
                raise RuntimeError(f"replay of task {b} diverged from the stored episode before tau={t}")
            rows.append(row)
        return self._rollouts(rows, parents.task, tau, tau, tau)

    def reflector(self, name, *, num_candidates, every):
        if name != FEEDBACK_REFLECTOR:
            raise ValueError(f"unknown reflector {name!r}")

        def reflect(eps):
            R = len(eps.solved)
            tau = np.full((R, num_candidates), -1, np.int32)
            exp = np.zeros((R, num_candidates, 2), np.int32)
            for r in range(R):
                n = int(eps.num_steps[r])
                own = np.arange(n) >= int(eps.start[r])
                lefts = np.flatnonzero(own & (eps.actions[r, :n] == 0))
                if eps.solved[r] or not own.any():
                    continue
                # the first wasted step (a move away from the exit), else the last step
                t = int(lefts[0]) if len(lefts) else n - 1
                tau[r, 0], exp[r, 0] = t, (eps.actions[r, t], t)
            return Reflection(tau, exp, np.zeros((R, num_candidates, 2), bool), (tau >= 0).astype(np.int32))
        return reflect


class TextCorridor:
    """The host-side agent interface (``interfaces.protocol.AgentInterface``)."""

    def session(self, policy, tasks, *, max_depth, temperature):
        return Session(tasks)

    def action(self, episode, t: int) -> int:
        return int(episode.actions[t])

    def sft_example(self, episode, first, last):
        toks, mask = [], []
        for t in range(last + 1):
            o = list(observe(int(episode.pos[t]), 0).encode())
            a = list(WORDS[int(episode.actions[t])].encode())
            toks += o + a
            mask += [False] * len(o) + [first <= t <= last] * len(a)
        return np.array(toks, np.int32), np.array(mask, bool)

    def success(self, policy, tasks, n, key, *, temperature, progress=True, checkpoint=None):
        s = Session(tasks)
        keys = jax.random.split(key, len(tasks) * n)
        return np.array([s._play(i // n, k, [])[2] for i, k in enumerate(keys)]).reshape(len(tasks), n)

    def episode_like(self):
        return TextEpisode(*([0] * len(TextEpisode._fields)))

    def describe_task(self, episodes, task):
        return f"corridor task {task}"

    def describe_rollout(self, episode):
        return " ".join(WORDS[a] for a in episode.actions[int(episode.start): int(episode.num_steps)])

    def describe_experience(self, experience):
        return f"avoid {WORDS[int(experience[0])]}"


TASKS = np.array([[3, 9], [4, -9], [2, 9], [4, 2], [3, 9], [5, 9], [4, 9], [3, -9]])   # (exit, pit)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("seam")
    cfg = C.from_dict({"stage1": {"train_levels": len(TASKS), "explore": {"budget": 4, "max_depth": 2}},
                       "eval": {"levels": 4, "n": 8}})
    agent = TextCorridor()
    for s in ("rollback", "independent"):
        runners.stage1(agent, None, TASKS, cfg, s, str(wd / "stage1" / s), progress=False)
    for v in ("leafe", "rehearsal"):
        runners.dataset(agent, str(wd / "stage1" / "rollback"), v, cfg, str(wd / "data" / v))
    runners.evaluate(agent, None, TASKS[:4], cfg, jax.random.key(0), str(wd / "eval"), progress=False)
    return wd, agent, cfg


def test_host_side_agent_runs_the_search(run):
    wd, agent, cfg = run
    tree = load_tree(str(wd / "stage1" / "rollback" / "tree.npz"), agent.episode_like(), as_jax=False)
    br = tree.is_branch
    assert br.any() and (tree.valid.sum(1) <= cfg.stage1.explore.budget).all()
    for b, n in zip(*np.nonzero(br)):
        p, tau = tree.parent[b, n], tree.tau[b, n]
        ep = tree.episodes
        # restored by replay: the branch's history before tau is the parent's, and the revised
        # action a'_tau follows the experience (the action that lost the parent is avoided)
        np.testing.assert_array_equal(ep.pos[b, n, : tau + 1], ep.pos[b, p, : tau + 1])
        np.testing.assert_array_equal(ep.actions[b, n, :tau], ep.actions[b, p, :tau])
        assert ep.actions[b, n, tau] != ep.actions[b, p, tau] == tree.experience[b, n, 0]
        # the replay steps are charged to the budget
        assert tree.env_steps[b, n] == ep.num_steps[b, n]
    ind = json.load(open(wd / "stage1" / "independent" / "stats.json"))
    it = load_tree(str(wd / "stage1" / "independent" / "tree.npz"), agent.episode_like(), as_jax=False)
    K = cfg.stage1.explore.budget
    first = np.where(it.valid & it.solved, it.order, K).min(1)       # stops at its first success
    assert (it.valid.sum(1) == np.minimum(first + 1, K)).all() and (first < K - 1).any()
    assert ind["rollouts"] == int(it.valid.sum()) < K * len(TASKS) and ind["successful_branches"] == 0
    assert ind["task_env_steps"] == (it.env_steps * (it.order <= first[:, None]) * it.valid).sum(1).tolist()
    text = open(wd / "stage1" / "rollback" / "trees.txt").read()
    assert "corridor task" in text and "tau=" in text and "avoid " in text


def test_host_side_agent_gives_stage2_data_and_passk(run):
    wd, agent, cfg = run
    st = json.load(open(wd / "data" / "leafe" / "stats.json"))
    assert st["e2p"] >= 1 and st["rehearsal"] >= 1
    src = sft_source(str(wd / "data" / "leafe"))
    for i in range(len(src)):
        r = src[i]
        text = bytes(np.asarray(r["tokens"])[np.asarray(r["loss_mask"])].astype(np.uint8)).decode()
        assert set(text.replace("left", "").replace("right", "")) == set()     # actions only
    reh = json.load(open(wd / "data" / "rehearsal" / "stats.json"))
    assert reh["e2p"] == 0 and reh["rehearsal"] == st["rehearsal"]
    succ = np.load(wd / "eval" / "success.npy")
    assert succ.shape == (4, cfg.eval.n) and succ.any()
    assert not succ[3].any()                  # the pit at 2 lies between the start and the exit at 4


def test_a_replay_that_diverges_is_an_error(run):
    wd, agent, cfg = run
    tree = load_tree(str(wd / "stage1" / "rollback" / "tree.npz"), agent.episode_like(), as_jax=False)
    b, n = map(int, np.argwhere(tree.is_branch)[0])
    parents = jax.tree.map(lambda x: x[b, tree.parent[b, n]][None].copy(), tree.episodes)
    parents.pos[0, 0] += 1                                      # a stored observation that lies
    with pytest.raises(RuntimeError, match="diverged"):
        Session(TASKS).branches(parents, tree.tau[b, n][None], tree.experience[b, n][None],
                                tree.forbidden[b, n][None], jax.random.split(jax.random.key(0), 1),
                                use_experience=True, use_mask=False)
