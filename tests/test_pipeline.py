"""``leafe pipeline`` end to end on the tiny config: outputs pinned to the pre-redesign code,
resumption, extension, config validation and the hostile-input cases of issue #12."""

import json
import os

import numpy as np
import pytest

from leafe_jax.cli import main
from leafe_jax.configs import ConfigError
from leafe_jax.envs.sokoban.boxoban import read_boxoban, write_boxoban
from leafe_jax.pipeline import config as C
from leafe_jax.pipeline import stages as S
from leafe_jax.pipeline.run import check_context, run_pipeline
from leafe_jax.train.checkpoint import load_policy
from pinned import COMPARISON, LEGACY, PINNED, fingerprint

TRANSFER = os.path.join(os.path.dirname(__file__), "..", "experiments", "levels", "transfer_verl6x6.txt")

EXP = os.path.join(os.path.dirname(__file__), "..", "experiments")


def test_config_errors_are_named(tmp_path):
    cases = [({"stage1": {"budgett": 3}}, r"unknown key\(s\) in \[stage1\]: \['budgett'\]"),
             ({"stage3": {}}, r"unknown key\(s\) in the config: \['stage3'\]"),
             ({"stage1": {"train_levels": 0}}, "stage1.train_levels must be >= 1, got 0"),
             ({"base": {"sft": {"steps": "many"}}}, "base.sft.steps must be an integer"),
             ({"stage2": {"variants": ["leafe", "magic"]}}, r"stage2.variants must be one of .*'magic'"),
             ({"stage1": {"strategies": ["rollback", "beam"]}}, r"stage1.strategies must be one of"),
             ({"stage1": {"strategies": []}}, "stage1.strategies must name at least one"),
             ({"baselines": {"methods": ["ppo"]}}, "baselines.methods must be one of"),
             ({"stage1": {"explore": {"budget": 0}}}, "stage1.explore.budget must be >= 1, got 0"),
             ({"stage1": {"explore": {"budget": -1}}}, "stage1.explore.budget must be >= 1"),
             ({"stage1": {"explore": {"max_depth": 0}}}, "stage1.explore.max_depth must be >= 1"),
             ({"stage1": {"explore": {"children": 0}}}, "stage1.explore.children must be >= 1"),
             ({"stage1": {"explore": {"budget": 2.7}}}, "stage1.explore.budget must be an integer, got 2.7"),
             ({"stage1": {"explore": {"temperature": 0}}}, "stage1.explore.temperature must be > 0"),
             ({"stage1": {"explore": {"reflect_every": -1}}}, "stage1.explore.reflect_every must be >= 0"),
             ({"eval": {"temperature": -1}}, "eval.temperature must be > 0"),
             ({"stage2": {"sft": {"batch_size": 0}}}, "stage2.sft.batch_size must be >= 1"),
             ({"stage2": {"sft": {"learning_rate": -1}}}, "stage2.sft.learning_rate must be > 0"),
             ({"stage2": {"sft": {"learning_rate": float("nan")}}}, "stage2.sft.learning_rate must be finite"),
             ({"base": {"sft": {"learning_rate": float("inf")}}}, "base.sft.learning_rate must be finite"),
             ({"baselines": {"early_experience": {"wm_fraction": 2}}},
              "baselines.early_experience.wm_fraction must be <= 1, got 2"),
             ({"baselines": {"grpo": {"group_size": 1}}}, "baselines.grpo.group_size must be >= 2"),
             ({"stage1": {"explore": {"use_mask": 1}}}, "use_mask must be true or false"),
             ({"experiment": {"preset": "9x9"}}, r"experiment.preset must be one of .*'9x9'"),
             ({"stage2": {"variants": ["leafe"]}, "stage1": {"strategies": ["independent"]}},
              "stage1.strategies must include 'rollback'")]
    for d, msg in cases:
        with pytest.raises(ValueError, match=msg):
            C.from_dict(d)
    bad = tmp_path / "bad.toml"
    bad.write_text("[base\nsteps = 3")
    with pytest.raises(ValueError, match="not valid TOML"):
        C.load(str(bad))
    with pytest.raises(FileNotFoundError, match="no pipeline config"):
        C.load(str(tmp_path / "missing.toml"))
    with pytest.raises(ValueError, match="is a directory, not a pipeline config"):
        C.load(str(tmp_path))
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="not valid TOML"):
        C.load(str(tmp_path / "bin.toml"))
    with pytest.raises(ValueError, match=r"stage1.explore.budget must be >= 1, got 0 \(in .*small"):
        C.load(os.path.join(EXP, "leafe_small.toml"), ["stage1.explore.budget=0"])
    # the experiment files hold only what differs from the defaults; leafe_small is the default
    assert C.load(os.path.join(EXP, "leafe_small.toml")) == C.small() == C.PipelineConfig()
    cfg = C.load(os.path.join(EXP, "leafe_small.toml"), ["experiment.seed=2", "stage1.explore.budget=4"])
    assert cfg == C.from_dict({"experiment": {"seed": 2}, "stage1": {"explore": {"budget": 4}}})
    cmp = C.load(os.path.join(EXP, "compare_small.toml"))
    assert cmp.baselines.methods == ("grpo", "early_experience") and cmp.stage1.strategies == ("rollback",)
    big = C.load(os.path.join(EXP, "compare_tpu.toml"))
    assert big.base.sft.steps == 2000 and big.baselines.grpo.learning_rate == 1e-5
    assert check_context(big) <= 2048 and check_context(cmp) <= 1024
    with pytest.raises(ValueError, match="needs 1152 context tokens; model 'sokoban-small' holds 1024"):
        check_context(C.from_dict({"experiment": {"preset": "7x7_2box"},
                                   "stage1": {"explore": {"max_depth": 4}}}))


def test_overrides_are_applied_as_given_also_over_tiny():
    """--set values equal to the *small* default used to be dropped under --tiny."""
    small = C.small()
    for key, value, get in (("stage1.explore.budget", small.stage1.explore.budget, lambda c: c.stage1.explore.budget),
                            ("eval.n", small.eval.n, lambda c: c.eval.n),
                            ("base.sft.steps", small.base.sft.steps, lambda c: c.base.sft.steps)):
        cfg = C.load(None, [f"{key}={value}"], base=C.tiny())
        assert get(cfg) == value != get(C.tiny())
    assert C.load(None, ["stage1.strategies=['rollback']"], base=C.tiny()).stage1.strategies == ("rollback",)
    with pytest.raises(ValueError, match="is not section.key=value"):
        C.load(None, ["budget=3"])


def test_context_length_override_keeps_the_architecture():
    """``experiment.max_seq_len`` lengthens the preset's context (7x7 / 40 steps needs 1 087
    tokens, sokoban-small has 1 024) and changes nothing else; 0 keeps the preset's.
    ``experiment.remat`` only sets the model's remat (its update is tested equal in
    test_train)."""
    preset = C.load(None, []).experiment.policy_config()
    assert preset.max_seq_len == 1024
    long = C.load(None, ["experiment.max_seq_len=2048", "experiment.history_length=2"]).experiment.policy_config()
    assert long.max_seq_len == 2048 and long.window_segments == 3
    assert long.replace(max_seq_len=1024, window_segments=preset.window_segments,
                        segment_tokens=preset.segment_tokens) == preset
    with pytest.raises(ConfigError, match="max_seq_len must be >= 0"):
        C.load(None, ["experiment.max_seq_len=-1"])
    assert C.load(None, ["experiment.remat=true"]).experiment.policy_config() == preset.replace(remat=True)
    assert C.load(None, ["base.sft.accum=4"]).base.sft.accum == 4
    with pytest.raises(ValueError, match="batch_size 16 does not split into accum = 3"):
        C.load(None, ["base.sft.accum=3"])


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_pinned(tmp_path):
    """The tiny run and its comparison extension give bit-identical trees, datasets, success
    matrices and Pass@k to the pre-redesign code (commit 654d837; tests/data/ holds its
    fingerprints) under the pre-redesign budgets and Stage-2 objective (``LEGACY``); GRPO's
    entries were re-pinned when its schedule became sized in optimiser updates (issue #13;
    every other fingerprint unchanged); then resumption, refusals and artefacts."""
    tiny = C.from_dict(LEGACY, base=C.tiny())
    wd = str(tmp_path / "run")
    report = run_pipeline(tiny, wd, progress=False)
    timings = json.load(open(os.path.join(wd, "timings.json")))
    # resumed: every stage is skipped, nothing is recomputed
    again = run_pipeline(tiny, wd, progress=False)
    assert again["timings"] == timings and again["passk"] == report["passk"]
    # a changed setting is refused by the first stage it touches, naming the setting
    with pytest.raises(ValueError, match=r"'eval/base'.*eval\.n differ"):
        run_pipeline(C.from_dict({"eval": {"n": 2}}, base=tiny), wd, progress=False)
    with pytest.raises(ValueError, match=r"'stage1/rollback'.*explore\.budget differ"):
        run_pipeline(C.from_dict({"stage1": {"explore": {"budget": 3}}}, base=tiny), wd, progress=False)
    # the comparison extends the same run; nothing already computed is redone
    cmp = C.from_dict(COMPARISON, base=tiny)
    run_pipeline(cmp, wd, progress=False)
    t2 = json.load(open(os.path.join(wd, "timings.json")))
    assert all(t2[k] == timings[k] for k in timings)
    assert {"sft_bc", "grpo", "early_experience", "eval_grpo", "stage1_rollback_oracle"} <= set(t2)

    with open(PINNED) as fh:
        assert fingerprint(wd) == json.load(fh)

    stats = json.load(open(os.path.join(wd, "data", "leafe", "stats.json")))
    assert stats["successful_roots"] > 0 and stats["successful_branches"] > 0 and stats["e2p"] > 0
    model, meta = load_policy(os.path.join(wd, "sft", "leafe"))
    assert meta["step"] == tiny.stage2.sft.steps
    text = open(os.path.join(wd, "report.md")).read()
    assert "Stage 1 at equal budget" in text and "| rollback_oracle |" in text and "task " in text
    assert "Interaction budgets" in text and os.path.exists(os.path.join(wd, "eval", "passk.png"))
    e = json.load(open(os.path.join(wd, "baselines", "early_experience", "budget.json")))
    assert e["wm_steps"] + e["imitation_steps"] == cmp.stage2.sft.steps
    with pytest.raises(ValueError, match=r"'baselines/grpo'.*grpo\.learning_rate differ"):
        run_pipeline(C.from_dict({"baselines": {"grpo": {"learning_rate": 1.0}}}, base=cmp), wd,
                     progress=False)
    # `leafe evaluate` on the pipeline's base reproduces the pipeline's numbers exactly: the same
    # held-out levels and sampling keys for the same seed and pool sizes
    t = tiny
    assert main(["evaluate", os.path.join(wd, "base"), "--levels", str(t.eval.levels), "--n", str(t.eval.n),
                 "--demo-levels", str(t.base.demo_levels), "--train-levels", str(t.stage1.train_levels),
                 "--out", str(tmp_path / "ev")]) == 0
    ours = json.load(open(tmp_path / "ev" / "passk.json"))["passk"]["base"]
    assert ours == json.load(open(os.path.join(wd, "eval", "passk.json")))["passk"]["base"]
    # ... and it points at the run's policies when given the run itself
    assert main(["evaluate", wd, "--out", str(tmp_path / "ev2")]) == 2
    # the transfer level set (another generator): only the new evaluations run
    ids, lv, H, W = read_boxoban(TRANSFER)
    write_boxoban(tmp_path / "transfer.txt", type(lv)(grid=lv.grid[:12], player=lv.player[:12]), H, W)
    tr = C.from_dict({"eval": {"transfer_levels": str(tmp_path / "transfer.txt")}}, base=cmp)
    run_pipeline(tr, wd, progress=False)
    t3 = json.load(open(os.path.join(wd, "timings.json")))
    assert all(t3[k] == t2[k] for k in t2) and {f"eval_transfer_{m}" for m in ("base", "leafe", "grpo")} <= set(t3)
    pk = json.load(open(os.path.join(wd, "eval_transfer", "passk.json")))["passk"]
    assert set(pk) == set(json.load(open(os.path.join(wd, "eval", "passk.json")))["passk"])
    assert np.load(os.path.join(wd, "eval_transfer", "base", "success.npy")).shape == (12, tiny.eval.n)
    assert "Pass@k on the transfer levels" in open(os.path.join(wd, "report.md")).read()
    write_boxoban(tmp_path / "transfer.txt", type(lv)(grid=lv.grid[12:24], player=lv.player[12:24]), H, W)
    with pytest.raises(ValueError, match=r"'eval_transfer/base'.*levels differ"):
        run_pipeline(tr, wd, progress=False)


def test_stage_markers_record_their_inputs(tmp_path):
    """A stage is reused only with equal inputs; markers of the old layout, stages made with
    an earlier level generator and unreadable markers are refused by name, and left as they were."""
    cfg = C.tiny()
    st = S.Stages(str(tmp_path), cfg)
    assert not st.done("base")
    st.mark("base")
    assert st.done("base")
    assert json.loads((tmp_path / "base" / "DONE").read_text())["inputs"]["base"]["sft"]["steps"] == 40
    with pytest.raises(ValueError, match=r"'base'.*base\.sft\.steps differ"):
        S.Stages(str(tmp_path), C.from_dict({"base": {"sft": {"steps": 7}}}, base=cfg)).done("base")
    # memory-only settings are not inputs: a run resumes with them changed, and markers
    # written before they existed still match
    memory = C.load(None, ["experiment.remat=true", "experiment.max_seq_len=2048",
                           "base.sft.accum=2", "stage2.sft.accum=2"], base=cfg)
    assert S.Stages(str(tmp_path), memory).done("base")
    for stage in ("base", "stage1/rollback", "sft/leafe", "baselines/early_experience", "eval/leafe"):
        got = json.dumps(S.inputs(memory, stage))
        assert got == json.dumps(S.inputs(cfg, stage)) and "accum" not in got and "remat" not in got
    done = tmp_path / "base" / "DONE"
    old = json.loads(done.read_text())
    old["inputs"]["generator_version"] = 1
    done.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="level generator of an earlier version"):
        st.done("base")
    for text in ('{"inputs": {"preset": "6x6_2box"}}', "{}"):
        done.write_text(text)
        with pytest.raises(ValueError, match=r"earlier layout of leafe_jax \(\[pipeline\] became \[experiment\]"):
            st.done("base")
        assert done.read_text() == text                                  # left as it was
    done.write_text("")
    with pytest.raises(ValueError, match=r"base/DONE is unreadable"):
        st.done("base")
    (tmp_path / "timings.json").write_text('{"base": 1')
    with pytest.raises(ValueError, match=r"timings.json is unreadable"):
        S.Stages(str(tmp_path), cfg)
    # what each stage depends on: a later stage's setting does not touch an earlier stage
    later = C.from_dict({"stage2": {"sft": {"learning_rate": 1.0}}, "eval": {"n": 2},
                         "stage1": {"strategies": ["rollback"]}}, base=cfg)
    assert S.inputs(cfg, "stage1/rollback") == S.inputs(later, "stage1/rollback")
    assert S.inputs(cfg, "sft/leafe") != S.inputs(C.from_dict({"stage1": {"explore": {"budget": 3}}}, base=cfg),
                                                  "sft/leafe")
    assert S.model_stage("bc-control") == "sft/bc" and S.model_stage("early-experience") == \
        "baselines/early_experience"


def test_bookkeeping_writes_are_atomic_and_the_workdir_is_locked(tmp_path, monkeypatch):
    S.write_json(str(tmp_path / "a.json"), {"x": 1})

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(json, "dump", boom)
    with pytest.raises(OSError):
        S.write_json(str(tmp_path / "a.json"), {"x": 2})
    monkeypatch.undo()
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}     # the old file intact
    with S.WorkdirLock(str(tmp_path)):
        with pytest.raises(S.WorkdirBusy, match="in use by another leafe pipeline run"):
            with S.WorkdirLock(str(tmp_path)):
                pass
    with S.WorkdirLock(str(tmp_path)):         # released: a later run takes it
        pass


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from leafe_jax.pipeline import run as R

    assert main(["pipeline", str(tmp_path), "--workdir", str(tmp_path / "w")]) == 2
    assert "is a directory, not a pipeline config" in capsys.readouterr().err
    assert main(["pipeline", "--tiny", "--set", "stage1.explore.budget=0", "--workdir", str(tmp_path / "w")]) == 2
    assert "stage1.explore.budget must be >= 1" in capsys.readouterr().err

    def full(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "w" / "base"))
    monkeypatch.setattr(R, "_run", full)
    assert main(["pipeline", "--tiny", "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"leafe: error: No space left on device: {tmp_path / 'w' / 'base'}"]
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setattr(os, "makedirs", lambda *a, **k: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied", str(ro / "w"))))
    assert main(["pipeline", "--tiny", "--workdir", str(ro / "w")]) == 2
    assert capsys.readouterr().err.strip() == f"leafe: error: Permission denied: {ro / 'w'}"


def test_a_preempted_stage_is_not_marked_done(tmp_path, monkeypatch):
    from leafe_jax.pipeline import runners
    from leafe_jax.train.loop import Preempted

    def preempted(*a, **k):
        raise Preempted("SIGTERM: stopped after step 1")
    monkeypatch.setattr(runners, "pretrain_base_policy", preempted)
    with pytest.raises(Preempted):
        run_pipeline(C.tiny(), str(tmp_path), progress=False)
    assert not (tmp_path / "base" / "DONE").exists()


@pytest.mark.slow
def test_tiny_pipeline_with_the_faithful_options(tmp_path):
    """The issue-#13 options in one run: ``experiment.history_length`` makes every policy of
    the run windowed (the base checkpoint carries the window, so Stage 2, GRPO and evaluation
    load it as trained; another window is refused by the base stage); a base that follows
    and writes experience; periodic reflection that stops lost rollouts; the policy as its own
    reflector (``rollback_self``) and its Stage 2 (``leafe_self``); GRPO to convergence and
    Early Experience's world modelling over what it collected."""
    cfg = C.from_dict({"experiment": {"history_length": 1},
                       "base": {"following_rounds": 1, "following_levels": 16, "following_steps": 5,
                                "self_reflection": True},
                       "stage1": {"strategies": ["rollback", "rollback_self"],
                                  "explore": {"interrupt_every": 3}},
                       "stage2": {"variants": ["leafe", "leafe_self"]},
                       "baselines": {"methods": ["grpo", "grpo_converged", "early_experience"],
                                     "converge": {"val_levels": 4, "val_samples": 2, "eval_every": 1,
                                                  "patience": 1, "cap": 3.0}}}, base=C.tiny())
    assert cfg.experiment.policy_config().window_segments == 2
    wd = str(tmp_path / "run")
    report = run_pipeline(cfg, wd, progress=False)
    for d in ("base", "sft/leafe", "baselines/grpo", "baselines/grpo_converged/best",
              "baselines/early_experience/imitation"):
        m, _ = load_policy(os.path.join(wd, d))
        assert m.cfg.window_segments == 2 and m.cfg.segment_tokens, d
    assert {"base", "leafe", "grpo", "grpo-converged", "early-experience"} <= set(report["passk"])
    s1 = report["stage1"]
    assert s1["rollback_self"]["reflector"]["asked"] > 0 and s1["rollback"]["interrupted"] >= 0
    text = open(os.path.join(wd, "report.md")).read()
    assert "Self-reflection" in text and "rollback_self: the policy's own reflections" in text
    st = json.load(open(os.path.join(wd, "data", "leafe_self", "stats.json")))
    if st["examples"]:
        assert "leafe-self" in report["passk"]
    # GRPO to convergence: a curve from the base on, stopped by patience or the cap, the
    # evaluated policy the best validated one
    curve = json.load(open(os.path.join(wd, "baselines", "grpo_converged", "curve.json")))
    bj = json.load(open(os.path.join(wd, "baselines", "grpo_converged", "budget.json")))
    assert curve[0]["rollout_batches"] == 0 and len(curve) >= 2
    assert bj["rollout_batches"] == max(curve, key=lambda c: c["val_pass1"])["rollout_batches"]
    assert curve[-1]["rollout_batches"] <= bj["cap_rollout_batches"]
    assert "GRPO to convergence: validation curve" in open(os.path.join(wd, "report.md")).read()
    # Early Experience's world modelling covers what it collected (one pass), then imitation
    e = json.load(open(os.path.join(wd, "baselines", "early_experience", "budget.json")))
    assert e["wm_examples_seen"] == e["examples"] and e["imitation_steps"] == cfg.stage2.sft.steps
    with pytest.raises(ValueError, match=r"'base'.*history_length differ"):
        run_pipeline(C.from_dict({"experiment": {"history_length": 2}}, base=cfg), wd, progress=False)


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(EXP) if f.endswith(".toml")))
def test_every_experiment_config_reads(name):
    """Each committed experiment config is a valid pipeline config (names, types, ranges)."""
    C.load(os.path.join(EXP, name))
