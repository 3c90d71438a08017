"""Text Sokoban (``interfaces.text``): verl-agent's format and parsing against hand-written
cases, and the text agent loop driven by a scripted stand-in generator over the real
SmolLM2 tokenizer (a random tiny model never parses an action, so it would test nothing):
valid and invalid answers, rollback branches that re-render their parent's prompts, Stage-2
chat examples without experience text, the model reflector's malformed answers, and the
Stage-1 -> dataset -> Pass@k stages of the pipeline."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leafe_jax.envs.sokoban import constants as C
from leafe_jax.envs.sokoban import get_preset
from leafe_jax.envs.sokoban.level import Level
from leafe_jax.envs.sokoban.pools import level_pool
from leafe_jax.envs.sokoban.solver import solve
from leafe_jax.interfaces.text import format as F
from leafe_jax.interfaces.text.agent import TextSokoban, truncate
from leafe_jax.interfaces.text.policy import Generation
from leafe_jax.leafe.explore import ExploreConfig, explore
from leafe_jax.policy.tokenizer import Tokenizer

# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, think, expected", [
    ("<action>left</action>", False, (C.LEFT, True)),
    ("<ACTION> Up </ACTION>", False, (C.UP, True)),              # upper case: lowered
    ("I go left", False, (F.INVALID, False)),                     # no tags
    ("<action>left", False, (F.INVALID, False)),                  # no closing tag
    ("</action>left<action>", False, (F.INVALID, False)),         # tags in the wrong order
    ("<action>left or up</action>", False, (C.UP, True)),         # several: pool order wins
    ("<action>right</action><action>left</action>", False, (C.RIGHT, True)),   # first block
    ("<action>still</action>", False, (F.INVALID, False)),        # no no-op action here
    ("<action>jump</action>", False, (F.INVALID, False)),
    ("<action>Move DOWN now</action>", False, (C.DOWN, True)),    # the word inside the text
    ("<action>down</action>", True, (C.DOWN, False)),             # think asked, missing
    ("<think>box is below</think><action>down</action>", True, (C.DOWN, True)),
])
def test_parse_action_as_verl_agent(text, think, expected):
    assert F.parse_action(text, think) == expected


@pytest.mark.parametrize("text, start, n, expected", [
    ("<rollback>3</rollback><experience>push left, not up</experience>", 0, 5,
     F.ParsedReflection("ok", 2, "push left, not up")),
    ("<ROLLBACK> step 2 </ROLLBACK><Experience>go around</Experience>", 0, 5,
     F.ParsedReflection("ok", 1, "go around")),
    ("<rollback>none</rollback>", 0, 5, F.ParsedReflection("none")),
    ("<rollback>9</rollback><experience>x</experience>", 0, 5, F.ParsedReflection("out_of_range", 8, "x")),
    ("<rollback>1</rollback><experience>x</experience>", 2, 5, F.ParsedReflection("out_of_range", 0, "x")),
    ("<rollback>0</rollback><experience>x</experience>", 0, 5, F.ParsedReflection("out_of_range", -1, "x")),
    ("rollback to step 3", 0, 5, F.ParsedReflection("malformed")),
    ("<rollback>three</rollback><experience>x</experience>", 0, 5, F.ParsedReflection("malformed")),
    ("<rollback>2</rollback>", 0, 5, F.ParsedReflection("malformed")),            # no experience
    ("<rollback>2</rollback><experience>  </experience>", 0, 5, F.ParsedReflection("malformed")),
    ("", 0, 5, F.ParsedReflection("malformed")),
])
def test_parse_reflection(text, start, n, expected):
    assert F.parse_reflection(text, start=start, num_steps=n) == expected


def test_reflection_answer_round_trips():
    a = F.reflection_answer(3, "do not push the box into the corner")
    assert F.parse_reflection(a, start=0, num_steps=5) == F.ParsedReflection(
        "ok", 3, "do not push the box into the corner")
    assert F.parse_reflection(F.reflection_answer(None), start=0, num_steps=5).status == "none"


GRID = np.array([[0, 0, 0, 0], [0, 5, 4, 0], [0, 1, 2, 0], [0, 0, 0, 0]])     # obs codes
GRID_TEXT = "####\n#PX#\n#_O#\n####"


def test_turn_prompt_by_hand():
    cfg = F.TextConfig(history_length=1)
    past = [F.Turn(GRID, C.LEFT, "You walked into a wall: nothing moved.")]
    got = F.turn_prompt(1, GRID, past, ["Moving left from row 2, column 2 moved nothing."], cfg)
    want = ("You have taken 1 step(s). Your last 1:\n"
            f"Step 1, observation:\n{GRID_TEXT}\nAction: left. Feedback: You walked into a wall: "
            "nothing moved.\n\n"
            f"Step 2, current observation:\n{GRID_TEXT}\n\n"
            "Lessons from your earlier attempts at this level:\n"
            "- Moving left from row 2, column 2 moved nothing.\n\n"
            "Answer with one admissible action inside <action></action>, for example "
            "<action>left</action>.")
    assert got == want
    # no history, no experience: just the grid and the request
    assert F.turn_prompt(0, GRID, [], [], cfg) == (
        f"Step 1, current observation:\n{GRID_TEXT}\n\n" + F.answer_request(False))


def _info(**on):
    keys = ("invalid_action", "bumped", "pushed", "box_on_target", "box_off_target", "deadlock", "solved")
    return {k: k in on for k in keys}


@pytest.mark.parametrize("info, wall, ssp, words", [
    (_info(invalid_action=True), False, 1, ["no admissible action", "nothing happened"]),
    (_info(bumped=True), True, 1, ["walked into a wall"]),
    (_info(bumped=True), False, 1, ["box could not move"]),
    (_info(pushed=True, box_on_target=True), False, 0, ["pushed a box", "now on a target"]),
    (_info(pushed=True, deadlock=True), False, 3, ["can never reach a target", "no longer be solved"]),
    (_info(), False, 5, ["You moved.", "in the last 5 steps"]),
    (_info(pushed=True, box_on_target=True, solved=True), False, 0, ["solved the level"]),
])
def test_feedback_words(info, wall, ssp, words):
    text = F.feedback_text(info, bumped_wall=wall, steps_since_progress=ssp, no_progress_steps=5)
    for w in words:
        assert w in text, (w, text)


# ---------------------------------------------------------------------------- the agent
PRESET = get_preset("verl6x6")
SYM = {s: i for i, s in enumerate(C.RAGEN_SYMBOLS)}
OBS_TO_BITS = {C.WALL: C.BIT_WALL, C.FLOOR: 0, C.TARGET: C.BIT_TARGET,
               C.BOX_ON_TARGET: C.BIT_TARGET | C.BIT_BOX, C.BOX: C.BIT_BOX, C.PLAYER: 0,
               C.PLAYER_ON_TARGET: C.BIT_TARGET}


def grid_of(text: str, marker: str) -> Level:
    """The grid printed after the last ``marker`` of a prompt, as a level."""
    rows = text[text.rindex(marker) + len(marker):].split("\n\n")[0].split("\n")
    codes = np.array([[SYM[ch] for ch in row] for row in rows]).reshape(-1)
    bits = np.array([OBS_TO_BITS[c] for c in codes], np.uint8)
    player = int(np.flatnonzero((codes == C.PLAYER) | (codes == C.PLAYER_ON_TARGET))[0])
    return Level(grid=bits, player=np.int32(player))


class ScriptedPolicy:
    """A stand-in generator that reads the prompt it is given: it plays the exact solver's
    move from the grid it sees, except (by its key) an invalid answer or a random move -
    unless the prompt holds a lesson, which it follows by playing the solver's move. Asked
    to reflect, it answers malformed text on even-length attempts and otherwise names the
    first step whose feedback reports a wasted or fatal move."""

    def __init__(self, tok, p_invalid=0.15, p_wrong=0.4):
        self.tokenizer, self.p_invalid, self.p_wrong = tok, p_invalid, p_wrong
        self.end = tok.token_id("<|im_end|>")
        self.calls = []

    def answer(self, text: str, u: float, v: float) -> str:
        if "Look back at this attempt" in text:
            steps = text.split("Your attempt:\n")[1].split("\nFinal observation")[0].strip().split("\n")
            if len(steps) % 2 == 0:
                return "I am not sure what went wrong."
            bad = [i for i, s in enumerate(steps) if "nothing moved" in s or "never reach" in s
                   or "nothing happened" in s]
            return F.reflection_answer(bad[0] if bad else None, "avoid that move")
        level = grid_of(text, "current observation:\n")
        best = solve(level, PRESET.height, PRESET.width).actions
        follow = "Lessons from your earlier attempts" in text
        if best and (follow or u >= self.p_invalid + self.p_wrong):
            return f"<action>{F.ACTIONS[best[0]]}</action>"
        if not follow and u < self.p_invalid:
            return "I would go left"
        return f"<action>{F.ACTIONS[int(v * 4) % 4]}</action>"

    def generate(self, prompts, keys, *, max_new_tokens, temperature, prefix_len=0):
        out = []
        for p, k in zip(prompts, keys):
            u, v = np.asarray(jax.random.uniform(k, (2,)))
            text = self.tokenizer.decode(p)
            self.calls.append(text)
            ids = self.tokenizer.encode(self.answer(text, float(u), float(v)))[:max_new_tokens - 1]
            out.append(np.asarray(ids + [self.end], np.int32))
        return Generation(out, [np.full(len(o), -0.5, np.float32) for o in out])


@pytest.fixture(scope="module")
def tok(smollm2_path):
    return Tokenizer.from_gguf(smollm2_path)


@pytest.fixture(scope="module")
def agent(tok):
    return TextSokoban(PRESET.make_env(), tok, cfg=F.TextConfig(history_length=2))


@pytest.fixture(scope="module")
def levels():
    return level_pool("train", 8, PRESET.generator, 0).level


@pytest.fixture(scope="module")
def roots(agent, tok, levels):
    s = agent.session(ScriptedPolicy(tok), levels, max_depth=2, temperature=1.0)
    task = np.arange(8)
    out = s.roots(task, jax.random.split(jax.random.key(3), 8))
    return s, out


def test_chat_format_is_the_chat_template(agent, tok):
    """Shared prefix + a turn's ids decode to exactly the model's chat template around the
    instruction and the turn text."""
    turn = "Step 1, current observation:\n####\n#P_#\n####\n\nAnswer."
    ids = agent.fmt.prefix_ids + agent.fmt.ids(turn)
    want = tok.render([{"role": "user", "content": F.INSTRUCTION + turn}], add_generation_prompt=True)
    assert tok.decode(ids) == want
    assert tok.decode(agent.fmt.end_ids) == "<|im_end|>"


def test_roots_replay_exactly(agent, roots, levels):
    """Each episode's stored states are the env's own transitions under the parsed actions
    (an invalid answer: a no-op step flagged invalid), and every stored prompt is the one
    rendered from the record."""
    s, out = roots
    ep = out.episodes
    env, params = agent.env, agent.params
    assert (ep.num_steps == out.env_steps).all()
    assert (~ep.valid & ep.active).any() and (ep.valid & ep.active).any()
    for r in range(8):
        lv = jax.tree.map(lambda x: x[r], levels)
        _, st = env.reset_to_level(lv, params)
        for t in range(int(ep.num_steps[r])):
            assert int(ep.states.player[r, t]) == int(st.player)
            np.testing.assert_array_equal(ep.states.grid[r, t], np.asarray(st.grid))
            a = int(ep.actions[r, t])
            assert (a == F.INVALID) == (not ep.valid[r, t]) == bool(ep.info["invalid_action"][r, t])
            _, st, _, done, _ = env.step_env(jax.random.key(0), st, a, params)
            stored = ep.prompt[r, t, : ep.prompt_len[r, t]].tolist()
            assert stored == agent.fmt.ids(agent.turn_text(ep, r, t))
        assert bool(ep.solved[r]) == bool(done)
        # the response's text parses to the stored action
        for t in range(int(ep.num_steps[r])):
            text = agent.tokenizer.decode(ep.response[r, t, : ep.response_len[r, t]], skip_special=True)
            assert F.parse_action(text)[0] == ep.actions[r, t]
    assert out.tokens.sum() == ep.response_len.sum()


def test_invalid_answers_get_feedback(agent, roots):
    s, out = roots
    ep = out.episodes
    r, t = map(int, np.argwhere(ep.active & ~ep.valid)[0])
    assert "no admissible action" in agent.feedback(ep, r, t)
    np.testing.assert_array_equal(ep.states.grid[r, t + 1], ep.states.grid[r, t])
    assert ep.states.player[r, t + 1] == ep.states.player[r, t]


def test_branch_restores_the_parent_prompts(agent, roots):
    """A branch restored at tau re-renders its parent's prompt tokens before tau exactly,
    shows the experience from tau on (right before the answer request), and its prompt at
    tau without the experience is the parent's prompt at tau (the e2p context)."""
    s, out = roots
    ep = out.episodes
    refl = s.reflector("feedback", num_candidates=1, every=0)(ep)
    rows = np.flatnonzero(refl.tau[:, 0] >= 0)
    assert len(rows)
    parents = jax.tree.map(lambda x: x[rows], ep)
    tau = refl.tau[rows, 0]
    br = s.branches(parents, tau, refl.experience[rows, 0], refl.forbidden[rows, 0],
                    jax.random.split(jax.random.key(9), len(rows)), use_experience=True, use_mask=False)
    be = br.episodes
    lesson = "Lessons from your earlier attempts at this level:\n- "
    for i, r in enumerate(rows):
        t0 = int(tau[i])
        for t in range(t0):
            np.testing.assert_array_equal(be.prompt[i, t], ep.prompt[r, t])
            assert agent.fmt.ids(agent.turn_text(be, i, t)) == ep.prompt[r, t, : ep.prompt_len[r, t]].tolist()
        exp_text = agent.describe_experience(refl.experience[r, 0])
        at_tau = agent.turn_text(be, i, t0)
        assert lesson + exp_text + "\n\n" + F.answer_request(False) in at_tau
        assert agent.turn_text(be, i, t0, with_experience=False) == agent.turn_text(ep, r, t0)
        for t in range(t0, int(be.num_steps[i])):            # kept for the whole branch
            assert exp_text in agent.turn_text(be, i, t)
        assert be.start[i] == t0 and br.env_steps[i] == be.num_steps[i] - t0
    # the scripted policy follows a lesson with the solver's move: some branches succeed
    assert be.solved.any()
    with pytest.raises(ValueError, match="no forbidden-action mask"):
        s.branches(parents, tau, refl.experience[rows, 0], refl.forbidden[rows, 0],
                   jax.random.split(jax.random.key(9), len(rows)), use_experience=True, use_mask=True)


def test_feedback_reflector_names_the_deadlock(agent, roots):
    """A deadlocking push (feedback: can never reach a target) is what the feedback
    reflector takes back first; its experience names that move and cell in words."""
    s, out = roots
    ep = out.episodes
    refl = s.reflector("feedback", num_candidates=2, every=0)(ep)
    for r in range(8):
        dead = np.flatnonzero(ep.info["deadlock"][r] & ep.active[r])
        if ep.solved[r] or not len(dead):
            continue
        t = int(dead[0])
        assert refl.tau[r, 0] == t
        p = int(ep.states.player[r, t])
        want = F.experience_text("deadlock", int(ep.actions[r, t]), p // 6, p % 6)
        assert agent.describe_experience(refl.experience[r, 0]) == want
    assert (refl.tau[ep.solved] == -1).all()


def test_self_reflector_counts_malformed_answers(agent, tok, roots):
    s, out = roots
    ep = out.episodes
    reflect = s.reflector("self", num_candidates=1, every=0)
    refl = reflect(ep)
    failed = ~ep.solved
    even = failed & (ep.num_steps % 2 == 0)
    st = reflect.stats
    assert st["episodes"] == failed.sum() and st["malformed"] == even.sum()
    assert st["ok"] + st["none"] + st["out_of_range"] == (failed & ~even).sum()
    assert (refl.tau[even | ep.solved] == -1).all()          # never replaced
    for r in np.flatnonzero(refl.tau[:, 0] >= 0):
        assert agent.describe_experience(refl.experience[r, 0]) == "avoid that move"
        assert ep.num_steps[r] % 2 == 1
    assert st["generated_tokens"] > 0 and st["prompt_tokens"] > 0


def test_sft_examples_mask_exactly_the_responses(agent, tok, roots):
    """Each turn's example is (prompt without experience -> response + end of turn); the
    loss mask covers exactly the response tokens and the end-of-turn token."""
    s, out = roots
    ep = out.episodes
    r = int(np.argmax(ep.num_steps + 100 * (ep.active & ~ep.valid).any(1)))
    one = jax.tree.map(lambda x: x[r], ep)
    n = int(one.num_steps)
    exs = agent.sft_examples(one, 0, n - 1)
    kept = np.flatnonzero(one.valid[:n])
    assert len(exs) == len(kept) < n                 # invalid answers are left out
    for t, (toks, mask) in zip(kept, exs):
        resp = tok.decode(one.response[t, : one.response_len[t]])
        assert tok.decode(toks[mask]) == resp + "<|im_end|>"
        assert tok.decode(toks[~mask]) == tok.render(
            [{"role": "user", "content": F.INSTRUCTION + agent.turn_text(ep, r, t, with_experience=False)}],
            add_generation_prompt=True)
        assert mask[-1] and not mask[: len(toks) - int(mask.sum())].any()


def _with_turn(agent, tok, one, t: int, response: str, experience: str | None):
    """Episode ``one`` with turn t's response and (shown from t) experience replaced."""
    one = jax.tree.map(np.array, one)
    ids = tok.encode(response)
    one.response[t] = 0
    one.response[t, : len(ids)] = ids
    one.response_len[t] = len(ids)
    one.experience[:] = 0
    one.exp_from[:] = -1
    if experience is not None:
        e, _ = agent.fmt.experience_ids(experience, one.experience.shape[-1])
        one.experience[0], one.exp_from[0] = e, t
    return one


def test_e2p_quotes_and_action_only(agent, tok, roots):
    """Hand-written turns: reasoning that repeats four words of the experience quotes it,
    other reasoning does not, a bare answer has no reasoning (None); ``action_only``
    replaces the response by its bare <action>word</action>."""
    s, out = roots
    ep = out.episodes
    r = int(np.argmax(ep.valid[:, 0]))
    one = jax.tree.map(lambda x: x[r], ep)
    lesson = "Pushing the box down froze it; push it left instead."
    word = F.ACTIONS[int(one.actions[0])]
    cases = [(f"<think>It says push it left instead.</think><action>{word}</action>", lesson, True),
             (f"<think>The box is near the wall, so I go around.</think><action>{word}</action>", lesson, False),
             (f"<think>Push it LEFT instead!</think><action>{word}</action>", "push it left instead", True),
             (f"<action>{word}</action>", lesson, None),
             (f"<think>push it left instead</think><action>{word}</action>", None, None)]
    for resp, exp, want in cases:
        assert agent.quotes_experience(_with_turn(agent, tok, one, 0, resp, exp), 0) is want, resp
    long = _with_turn(agent, tok, one, 0, cases[0][0], lesson)
    (full, fm), = agent.sft_examples(long, 0, 0)
    (bare, bm), = agent.sft_examples(long, 0, 0, action_only=True)
    assert tok.decode(full[fm]) == cases[0][0] + "<|im_end|>"
    assert tok.decode(bare[bm]) == f"<action>{word}</action><|im_end|>"
    np.testing.assert_array_equal(full[~fm], bare[~bm])        # the same prompt


def test_interrupt_cuts_after_the_deadlock(agent, roots):
    s, out = roots
    ep = out.episodes
    cut = s.interrupt(out, 2)
    for r in range(8):
        dead = np.flatnonzero(ep.info["deadlock"][r] & ep.active[r])
        if len(dead) and (dead[0] // 2 + 1) * 2 < ep.num_steps[r]:
            at = (dead[0] // 2 + 1) * 2
            assert cut.episodes.num_steps[r] == at and not cut.episodes.solved[r]
            assert cut.env_steps[r] == at
            assert cut.tokens[r] == ep.response_len[r, :at].sum()
        else:
            assert cut.episodes.num_steps[r] == ep.num_steps[r]
    same = truncate(ep, ep.num_steps)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(ep)):
        np.testing.assert_array_equal(a, b)


def test_explore_with_the_text_agent(agent, tok, levels):
    """The Stage-1 search runs unchanged on the text agent: a tree with successful
    branches whose e2p examples hold no experience text."""
    from leafe_jax.leafe.distill import DistillConfig, stage2_examples
    cfg = ExploreConfig(budget=4, max_depth=2, children=1)
    stats = {}
    tree = explore(agent, ScriptedPolicy(tok), levels, jax.random.key(1), cfg, "rollback",
                   progress=False, stats=stats)
    assert (tree.is_branch & tree.solved).any()
    assert (tree.valid.sum(1) <= 4).all()
    recs, st = stage2_examples(agent, tree, DistillConfig())
    assert st["e2p"] > 0 and st["rehearsal"] > 0
    assert st["e2p_with_reasoning"] == st["e2p_quoting"] == 0        # bare answers: nothing to quote
    bare, _ = stage2_examples(agent, tree, DistillConfig(e2p_action_only=True))
    for a, b in zip(recs.tokens, bare.tokens):                       # already bare: the same
        np.testing.assert_array_equal(a, b)
    for toks, m, src in zip(recs.tokens, recs.loss_mask, recs.source):
        text = tok.decode(toks)
        assert "Lessons from your earlier attempts" not in text
        assert F.parse_action(tok.decode(np.asarray(toks)[np.asarray(m)]))[1]
    json.dumps(st)


def test_pipeline_stages_run_the_scripted_text_agent(agent, tok, levels, tmp_path):
    """The pipeline's Stage-1, dataset and evaluation runners take the text agent as they
    take the symbolic one (the stats, the chat dataset on disk, a resumable Pass@k)."""
    from leafe_jax.pipeline import config as PC
    from leafe_jax.pipeline import runners
    cfg = PC.from_dict({"experiment": {"agent": "text", "preset": "verl6x6"},
                        "stage1": {"train_levels": 8, "strategies": ["rollback", "rollback_self"],
                                   "explore": {"budget": 4, "max_depth": 2, "children": 1}},
                        "eval": {"levels": 4, "n": 4}})
    pol = ScriptedPolicy(tok)
    for s in ("rollback", "rollback_self"):
        runners.stage1(agent, pol, levels, cfg, s, str(tmp_path / s), progress=False)
    st = json.load(open(tmp_path / "rollback" / "stats.json"))
    assert st["successful_branches"] > 0 and st["compliance"]["branches"] > 0
    assert "p_repeat_with_experience" not in st["compliance"]        # a script cannot be scored
    assert 0 <= st["branch_starts"]["start_unsolvable"] <= 1
    self_st = json.load(open(tmp_path / "rollback_self" / "stats.json"))
    assert self_st["reflector"]["asked"] > 0
    # the model's reflection tokens, per task, count in its budget (the rule-based one has none)
    assert len(self_st["task_reflection_tokens"]) == 8
    assert sum(self_st["task_reflection_tokens"]) == self_st["reflector"]["generated_tokens"] > 0
    assert "task_reflection_tokens" not in st
    from leafe_jax.pipeline.report import _tokens_cell
    r = self_st["reflector"]["generated_tokens"]
    assert _tokens_cell(self_st) == f"{self_st['tokens']} + {r} reflection = {self_st['tokens'] + r}"
    se = st["session"]
    assert se["turns"] >= st["env_steps"] and 0 < se["invalid"] < se["turns"]     # (+ the tests' roots)
    runners.dataset(agent, str(tmp_path / "rollback"), "leafe", cfg, str(tmp_path / "data"))
    ds = json.load(open(tmp_path / "data" / "stats.json"))
    assert ds["examples"] == ds["e2p"] + ds["rehearsal"] > 0
    four = jax.tree.map(lambda x: x[:4], levels)
    runners.evaluate(agent, pol, four, cfg, jax.random.key(0), str(tmp_path / "eval"), progress=False)
    succ = np.load(tmp_path / "eval" / "success.npy")
    assert succ.shape == (4, 4) and succ.any()
    part = str(tmp_path / "partial.npz")
    again = agent.success(pol, four, 4, jax.random.key(0), temperature=1.0, progress=False,
                          batch_size=8, checkpoint=part)
    resumed = agent.success(pol, four, 4, jax.random.key(0), temperature=1.0, progress=False,
                            batch_size=8, checkpoint=part)
    np.testing.assert_array_equal(again, resumed)


# ---------------------------------------------------------------------------- SmolLM2
@pytest.fixture(scope="module")
def smol(smollm2_path):
    from leafe_jax.interfaces.text.policy import LMPolicy
    from leafe_jax.policy.pretrained import load_pretrained
    model, tok = load_pretrained(smollm2_path)
    return LMPolicy(model, tok, name="smollm2")


@pytest.mark.slow
def test_lm_policy_prefix_cache_and_row_keys(smol, agent, levels):
    """The shared-prefix KV cache changes nothing (greedy: the same tokens as a full
    prefill), and a row's sample depends on its own key, not on the rows beside it."""
    pre = agent.fmt.prefix_ids
    s = agent.session(smol, levels, max_depth=1, temperature=1.0)
    ep = s._empty(np.arange(3))
    prompts = [pre + agent.fmt.ids(agent.turn_text(ep, r, 0)) for r in range(3)]
    keys = jax.random.split(jax.random.key(0), 3)
    a = smol.generate(prompts, keys, max_new_tokens=12, temperature=0.0, prefix_len=len(pre))
    b = smol.generate(prompts, keys, max_new_tokens=12, temperature=0.0, prefix_len=0)
    for x, y in zip(a.tokens, b.tokens):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(np.concatenate(a.logprobs), np.concatenate(b.logprobs), atol=2e-3)
    full = smol.generate(prompts, keys, max_new_tokens=12, temperature=1.0, prefix_len=len(pre))
    alone = smol.generate(prompts[1:2], keys[1:2], max_new_tokens=12, temperature=1.0,
                          prefix_len=len(pre))
    np.testing.assert_array_equal(full.tokens[1], alone.tokens[0])


@pytest.mark.slow
def test_smollm2_plays_text_sokoban(smol, agent, levels):
    """The real model through the whole loop on two levels (4 turns each): whatever it
    answers is parsed, stepped and recorded; its reflections are parsed or counted."""
    small = TextSokoban(agent.env, agent.tokenizer, agent.params.replace(max_steps_in_episode=4),
                        cfg=F.TextConfig(history_length=1, max_new_tokens=16, reflection_new_tokens=24))
    lv = jax.tree.map(lambda x: x[:2], levels)
    s = small.session(smol, lv, max_depth=1, temperature=1.0)
    out = s.roots(np.arange(2), jax.random.split(jax.random.key(0), 2))
    ep = out.episodes
    assert (ep.num_steps == 4).all() | ep.solved.any()
    assert s.stats["turns"] == ep.num_steps.sum() and out.tokens.sum() > 0
    for r in range(2):
        for t in range(int(ep.num_steps[r])):
            text = small.tokenizer.decode(ep.response[r, t, : ep.response_len[r, t]], skip_special=True)
            assert F.parse_action(text) == (ep.actions[r, t], ep.valid[r, t])
    reflect = s.reflector("self", num_candidates=1, every=0)
    reflect(ep)
    st = reflect.stats
    assert st["asked"] == (~ep.solved).sum()
    assert st["ok"] + st["none"] + st["malformed"] + st["out_of_range"] == st["asked"]


@pytest.mark.slow
def test_action_distribution_is_the_normalised_answer_likelihood(smol, agent, levels):
    """The compliance distribution = softmax over the four canonical answers of their summed
    token log-probs, recomputed here with GRPO's ``policy_logprobs`` (temperature 1)."""
    from leafe_jax.baselines.grpo import policy_logprobs
    s = agent.session(ScriptedPolicy(agent.tokenizer), levels, max_depth=1, temperature=1.0)
    out = s.roots(np.arange(2), jax.random.split(jax.random.key(5), 2))
    ep = out.episodes
    t = np.array([0, 1])
    got = agent.action_distribution(smol, ep, t, 1.0)
    fmt = agent.fmt
    for r in range(2):
        prompt = fmt.prefix_ids + ep.prompt[r, t[r], : ep.prompt_len[r, t[r]]].tolist()
        sc = []
        for w in F.ACTIONS:
            ans = agent.tokenizer.encode(f"<action>{w}</action>") + fmt.end_ids
            lp = np.asarray(policy_logprobs(smol.model, jnp.asarray([prompt + ans], jnp.int32)))[0]
            sc.append(lp[len(prompt):].sum())
        want = np.exp(np.array(sc) - max(sc))
        np.testing.assert_allclose(got[r], want / want.sum(), rtol=2e-3, atol=1e-5)


def test_masked_logprobs_with_a_shared_prefix_equal_the_whole_rows():
    """The prefix's keys and values computed once and broadcast give the log-probs,
    entropies and parameter gradients of the rows with the prefix prepended (a full
    forward of each whole row), padding rows and ragged masks included."""
    from flax import nnx
    from leafe_jax.interfaces.text.episode import masked_logprobs
    from leafe_jax.policy.config import get_config
    from leafe_jax.policy.model import create_model
    model = create_model(get_config("test-tiny"), seed=3)
    rng = np.random.default_rng(0)
    prefix = rng.integers(1, 64, 11).astype(np.int32)
    rows = rng.integers(1, 64, (3, 9)).astype(np.int32)
    mask = np.zeros((3, 9), bool)
    mask[0, 4:7] = True
    mask[1, 1:9] = True                      # every token after the first (never a target)
    rows[2, 6:] = 0                          # a shorter row: padding after it
    mask[2, 5:6] = True
    whole = np.concatenate([np.broadcast_to(prefix, (3, 11)), rows], 1)
    wmask = np.concatenate([np.zeros((3, 11), bool), mask], 1)

    def run(tokens, m, pre):
        def f(params):
            gd, rest = nnx.split(model, nnx.Param, ...)[0::2]
            lp, valid, ent = masked_logprobs(nnx.merge(gd, params, rest), jnp.asarray(tokens),
                                             jnp.asarray(m), 8, 1.3, pre)
            return (lp * valid).sum(), (lp, valid, ent)
        return jax.value_and_grad(f, has_aux=True)(nnx.state(model, nnx.Param))

    (v1, (lp1, ok1, e1)), g1 = run(rows, mask, jnp.asarray(prefix))
    (v2, (lp2, ok2, e2)), g2 = run(whole, wmask, None)
    np.testing.assert_array_equal(ok1, ok2)
    assert ok1.sum() == 3 + 8 + 1
    np.testing.assert_allclose(lp1 * ok1, lp2 * ok2, atol=1e-5)
    np.testing.assert_allclose(e1 * ok1, e2 * ok2, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_text_grpo_batches_and_update(agent, tok, levels):
    """GRPO's text batch: one row per turn, the mask on exactly the response, the episode's
    group advantage, padding to whole minibatches only and no all-padding minibatch; an update raises the log-probs of the
    positive-advantage responses against the negative ones."""
    import dataclasses as dc
    from leafe_jax.baselines.grpo import GRPOConfig, policy_logprobs
    from leafe_jax.baselines.text_grpo import rollout_batch, update
    from leafe_jax.policy.config import get_config
    from leafe_jax.policy.model import create_model
    from leafe_jax.train.optim import OptimConfig, create_optimizer
    tiny = create_model(dc.replace(get_config("test-tiny"), vocab_size=tok.vocab_size, max_seq_len=1024))
    pol = ScriptedPolicy(tok)
    pol.model = tiny
    cfg = GRPOConfig(tasks_per_step=2, group_size=4, beta=0.0)
    short = TextSokoban(agent.env, tok, agent.params.replace(max_steps_in_episode=5),
                        F.TextConfig(history_length=0))
    batch, st = rollout_batch(short, pol, tiny, levels, 3, jax.random.key(0), cfg, minibatch_sequences=16)
    m, adv = batch["loss_mask"], batch["adv"]
    real = m.any(1)
    assert st["env_steps"] == real.sum() and len(m) % 16 == 0 and 0 <= len(m) - real.sum() < 16
    assert all(real[i: i + 16].any() for i in range(0, len(m), 16))
    for i in np.flatnonzero(real):
        text = tok.decode(batch["tokens"][i][m[i]])
        assert "</action>" in text or not text.startswith("<action>")
        assert tok.decode(batch["tokens"][i][: np.argmax(m[i])]).endswith("<|im_start|>assistant\n")
    np.testing.assert_allclose(batch["old_logp"], batch["ref_logp"])
    # the rows follow the shared instruction prefix; the log-probs at the response tokens
    # are the full forward's over prefix + row (GRPO's policy_logprobs)
    # (8 rows at a time: all rows' full-vocabulary logits at once would take ~14 GB)
    pre = batch["prefix"]
    assert pre.tolist() == short.fmt.prefix_ids
    whole = np.concatenate([np.broadcast_to(pre, (len(m), len(pre))), batch["tokens"]], 1)
    logp = lambda: np.concatenate([np.asarray(policy_logprobs(tiny, jnp.asarray(whole[i: i + 8])))
                                   for i in range(0, len(whole), 8)])[:, len(pre):]
    full = logp()
    for i in np.flatnonzero(real):
        at = np.flatnonzero(m[i])
        np.testing.assert_allclose(batch["old_logp"][i, : len(at)], full[i, at], atol=1e-4)
    assert (adv[real] > 0).any() and (adv[real] < 0).any() and (adv[~real] == 0).all()
    opt = create_optimizer(tiny, OptimConfig(learning_rate=3e-2, warmup_steps=0, total_steps=10))
    metrics = update(tiny, opt, batch, cfg, 0.2, 16)
    assert np.isfinite(metrics["loss"])
    new = logp()
    gain = ((new - full) * m).sum(1) / np.maximum(m.sum(1), 1)
    assert gain[adv > 0].mean() > gain[adv < 0].mean()


def test_text_config_is_checked():
    from leafe_jax.configs import ConfigError
    from leafe_jax.pipeline import config as PC
    for d, msg in [({"stage1": {"strategies": ["rollback", "rollback_mask"]}}, "symbolic-only"),
                   ({"baselines": {"methods": ["early_experience"]}}, "do not run on the text agent"),
                   ({"experiment": {"history_length": 2}}, "text.format.history_length"),
                   ({"text": {"format": {"max_new_tokens": 0}}}, "max_new_tokens")]:
        d = {**d, "experiment": {"agent": "text", **d.get("experiment", {})}}
        with pytest.raises(ConfigError, match=msg):
            PC.from_dict(d)


@pytest.mark.slow
def test_text_pipeline_end_to_end_with_smollm2(tmp_path, smollm2_path):
    """The whole text pipeline at the smallest size with the real model: a BC warm-up step,
    Stage 1, a LEAFE dataset (and SFT step when Stage 1 solved something), Pass@k of
    zero-shot / base (/ LEAFE), the report; rerunning it skips every stage. GRPO through the
    pipeline is tested on the tiny model (test_text_placement): with SmolLM2 its one batch
    took ~170 s alone and pushed this test past its 20-minute guard on the 2-core CI."""
    from leafe_jax.pipeline import config as PC
    cfg = PC.from_dict({
        "experiment": {"agent": "text", "preset": "verl6x6"},
        "text": {"model": smollm2_path, "format": {"history_length": 0, "max_new_tokens": 8},
                 "base": {"demo_levels": 2, "sft": {"steps": 1, "batch_size": 2}}},
        "stage1": {"train_levels": 2, "strategies": ["rollback"],
                   "explore": {"budget": 2, "max_depth": 1, "children": 1}},
        "stage2": {"variants": ["leafe"], "sft": {"steps": 1, "batch_size": 2}},
        "baselines": {"methods": []},
        "eval": {"levels": 2, "n": 2}})
    # a fresh process (as a user runs it: the CLI), so its ~7 GB are returned at exit
    import subprocess
    import sys
    wd = str(tmp_path / "run")
    code = ("import json, sys; from leafe_jax.pipeline import config as C; "
            "from leafe_jax.pipeline.run import run_pipeline; "
            "run_pipeline(C.from_dict(json.loads(sys.argv[1])), sys.argv[2], progress=False)")
    cmd = [sys.executable, "-c", code, json.dumps(cfg.to_dict()), wd]

    def run():
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200,
                           env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
        assert r.returncode == 0, r.stderr[-3000:]
    run()
    passk = json.load(open(tmp_path / "run" / "eval" / "passk.json"))["passk"]
    assert {"zero-shot", "base"} <= set(passk) and "grpo" not in passk
    assert (tmp_path / "run" / "report.md").exists()
    assert json.load(open(tmp_path / "run" / "base" / "warmup.json"))["examples"] > 0
    timings = json.load(open(tmp_path / "run" / "timings.json"))
    run()                                                   # everything done: nothing reruns
    assert json.load(open(tmp_path / "run" / "timings.json")) == timings


@pytest.mark.slow
def test_text_rollouts_on_a_mesh_equal_one_device(smol, agent, levels, smollm2_path):
    """Episodes split over the batch axes of 8 fake devices, the weights over fsdp: the
    greedy text loop gives the single-device episodes (tokens, actions)."""
    from leafe_jax.interfaces.text.policy import LMPolicy
    from leafe_jax.policy.gguf import load_gguf
    from leafe_jax.sharding import make_mesh
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    small = TextSokoban(agent.env, agent.tokenizer, agent.params.replace(max_steps_in_episode=2),
                        F.TextConfig(history_length=1, max_new_tokens=8))
    mesh = make_mesh((2, 4, 1))
    sharded = LMPolicy(load_gguf(smollm2_path, mesh=mesh), smol.tokenizer, mesh=mesh)
    keys = jax.random.split(jax.random.key(0), 3)
    a = small.session(smol, levels, max_depth=1, temperature=0.0).roots(np.arange(3), keys)
    b = small.session(sharded, levels, max_depth=1, temperature=0.0).roots(np.arange(3), keys)
    np.testing.assert_array_equal(a.episodes.response, b.episodes.response)
    np.testing.assert_array_equal(a.episodes.actions, b.episodes.actions)
    np.testing.assert_allclose(a.episodes.logprob, b.episodes.logprob, atol=2e-3)
