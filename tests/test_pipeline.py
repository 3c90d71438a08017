"""``leafe pipeline`` end to end on the tiny config: artefacts, resumption, config errors."""

import json
import os

import numpy as np
import pytest

from leafe_jax.leafe import config as C


def test_config_errors_are_named(tmp_path):
    from leafe_jax.leafe.pipeline import check_context

    with pytest.raises(ValueError, match=r"unknown config key\(s\) in \[stage1\]: \['budgett'\]"):
        C.from_dict({"stage1": {"budgett": 3}})
    with pytest.raises(ValueError, match=r"unknown config section\(s\) \['stage3'\]"):
        C.from_dict({"stage3": {}})
    with pytest.raises(ValueError, match="stage1.train_levels must be >= 1"):
        C.from_dict({"stage1": {"train_levels": 0}})
    with pytest.raises(ValueError, match="must be a number"):
        C.from_dict({"base": {"steps": "many"}})
    with pytest.raises(ValueError, match="unknown stage2 variants"):
        C.from_dict({"stage2": {"variants": ["leafe", "magic"]}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[base\nsteps = 3")
    with pytest.raises(ValueError, match="not valid TOML"):
        C.load(str(bad))
    with pytest.raises(FileNotFoundError, match="no pipeline config"):
        C.load(str(tmp_path / "missing.toml"))
    cfg = C.load(os.path.join(os.path.dirname(__file__), "..", "experiments", "leafe_small.toml"),
                 ["pipeline.seed=2", "stage1.budget=4"])
    assert cfg.pipeline.seed == 2 and cfg.stage1.budget == 4 and cfg == C.from_dict(
        {"pipeline": {"seed": 2}, "stage1": {"budget": 4}})      # the file is the default
    cmp = C.load(os.path.join(os.path.dirname(__file__), "..", "experiments", "compare_small.toml"))
    assert cmp.baselines.methods == ("grpo", "early_experience") and cmp.stage1.strategies == ("rollback",)
    with pytest.raises(ValueError, match="unknown stage1 strategies"):
        C.from_dict({"stage1": {"strategies": ["rollback", "beam"]}})
    big = C.load(os.path.join(os.path.dirname(__file__), "..", "experiments", "compare_tpu.toml"))
    assert check_context(big) <= 2048 and check_context(cmp) <= 1024
    with pytest.raises(ValueError, match="needs 1152 context tokens; model 'sokoban-small' holds 1024"):
        check_context(C.from_dict({"pipeline": {"preset": "7x7_2box"}, "stage1": {"max_depth": 4}}))
    with pytest.raises(ValueError, match="unknown baselines"):
        C.from_dict({"baselines": {"methods": ["ppo"]}})


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path):
    from leafe_jax.cli.evaluate import load_policy
    from leafe_jax.data.store import sft_counts, sft_source
    from leafe_jax.leafe.pipeline import run_pipeline

    wd = str(tmp_path / "run")
    report = run_pipeline(C.tiny(), wd, progress=False)
    # datasets: sizes and sources as the stats say
    for v, allowed in (("leafe", {"rehearsal", "e2p"}), ("rehearsal", {"rehearsal"})):
        stats = json.load(open(os.path.join(wd, "data", v, "stats.json")))
        if stats["examples"]:
            counts = sft_counts(sft_source(os.path.join(wd, "data", v)))
            assert set(counts) <= allowed and sum(counts.values()) == stats["examples"]
            assert counts.get("e2p", 0) == stats["e2p"]
    # checkpoints load
    model, meta = load_policy(os.path.join(wd, "sft", "leafe"))
    assert meta["step"] == C.tiny().stage2.steps
    # Pass@k JSON: expected keys, values in [0, 1], non-decreasing in k
    passk = json.load(open(os.path.join(wd, "eval", "passk.json")))["passk"]
    assert {"base", "leafe"} <= set(passk) <= {"base", "leafe", "rehearsal"}
    for table in passk.values():
        vals = [table[k]["mean"] for k in sorted(table, key=int)]
        assert list(map(int, sorted(table, key=int))) == [1, 2, 4]
        assert all(0 <= x <= 1 for x in vals) and vals == sorted(vals)
    text = open(os.path.join(wd, "report.md")).read()
    assert "Stage 1 at equal budget" in text and "rollback" in text and "task " in text
    assert os.path.exists(os.path.join(wd, "eval", "passk.png"))
    timings = json.load(open(os.path.join(wd, "timings.json")))
    assert {"base", "stage1_rollback", "eval_base", "eval_leafe"} <= set(timings)
    # resumed: every stage is skipped, nothing is recomputed
    again = run_pipeline(C.tiny(), wd, progress=False)
    assert again["timings"] == timings and again["passk"] == report["passk"]
    # a changed setting is refused by the first stage it touches, naming the setting
    with pytest.raises(ValueError, match=r"'eval/base'.*eval\.n differ"):
        run_pipeline(C.from_dict({"eval": {"n": 2}}, base=C.tiny()), wd, progress=False)
    with pytest.raises(ValueError, match=r"'stage1/rollback'.*stage1\.budget differ"):
        run_pipeline(C.from_dict({"stage1": {"budget": 3}}, base=C.tiny()), wd, progress=False)
    assert np.isfinite(report["stage1"]["rollback"]["env_steps"])

    # The comparison extends the same run: the BC control, GRPO and Early Experience from the
    # same base, at LEAFE's budget; nothing already computed is redone.
    cmp = C.from_dict({"baselines": {"methods": ["grpo", "early_experience"]},
                       "stage1": {"strategies": ["rollback", "rollback_oracle"]},
                       "stage2": {"variants": ["leafe", "rehearsal", "bc"]}}, base=C.tiny())
    run_pipeline(cmp, wd, progress=False)
    passk2 = json.load(open(os.path.join(wd, "eval", "passk.json")))["passk"]
    assert {"base", "leafe", "grpo", "early-experience", "bc-control"} <= set(passk2)
    assert all(passk2[m] == passk[m] for m in passk)          # the same models, not re-sampled
    t2 = json.load(open(os.path.join(wd, "timings.json")))
    assert all(t2[k] == timings[k] for k in timings)          # no earlier stage ran again
    assert {"sft_bc", "grpo", "early_experience", "eval_grpo"} <= set(t2)
    model, meta = load_policy(os.path.join(wd, "sft", "bc"))
    assert meta["step"] == cmp.stage2.steps
    target = json.load(open(os.path.join(wd, "stage1", "rollback", "stats.json")))["env_steps"]
    g = json.load(open(os.path.join(wd, "baselines", "grpo", "budget.json")))
    e = json.load(open(os.path.join(wd, "baselines", "early_experience", "budget.json")))
    assert g["target_env_steps"] == target == e["target_env_steps"]
    assert g["env_steps"] > 0 and e["env_steps"] >= min(target, e["examples"]) > 0
    # Early Experience gets the same number of update steps as the other fine-tunings
    assert e["wm_steps"] + e["imitation_steps"] == cmp.stage2.steps
    report2 = open(os.path.join(wd, "report.md")).read()
    assert "Interaction budgets" in report2 and "| rollback_oracle |" in report2
    oracle = json.load(open(os.path.join(wd, "stage1", "rollback_oracle", "stats.json")))
    assert oracle["env_steps"] > 0 and len(oracle["solved_within_k"]) == cmp.stage1.budget
    # a baseline setting changed after the fact is refused too
    with pytest.raises(ValueError, match=r"'baselines/grpo'.*grpo_lr differ"):
        run_pipeline(C.from_dict({"baselines": {"grpo_lr": 1.0}}, base=cmp), wd, progress=False)


def test_stage_markers_record_their_inputs(tmp_path):
    """A stage is reused only with equal inputs; older markers (no inputs) and stages made with
    an earlier level generator are refused by name, and left as they were."""
    from leafe_jax.leafe import pipeline as P

    cfg = C.tiny()
    st = P._Stages(str(tmp_path), cfg)
    assert not st.done("base")
    st.mark("base")
    assert st.done("base")
    assert json.loads((tmp_path / "base" / "DONE").read_text())["inputs"]["base"]["steps"] == 2
    with pytest.raises(ValueError, match=r"'base'.*base\.steps differ"):
        P._Stages(str(tmp_path), C.from_dict({"base": {"steps": 7}}, base=cfg)).done("base")
    done = tmp_path / "base" / "DONE"
    old = json.loads(done.read_text())
    old["inputs"]["generator_version"] = 1
    done.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="level generator of an earlier version"):
        st.done("base")
    done.write_text("{}")
    with pytest.raises(ValueError, match="before stages recorded their inputs"):
        st.done("base")
    assert done.read_text() == "{}"                                      # left as it was
    # what each stage depends on: a later stage's setting does not touch an earlier stage
    assert P._inputs(cfg, "stage1/rollback") == P._inputs(
        C.from_dict({"stage2": {"lr": 1.0}, "eval": {"n": 2}, "stage1": {"strategies": ["rollback"]}},
                    base=cfg), "stage1/rollback")
    assert P._inputs(cfg, "sft/leafe") != P._inputs(C.from_dict({"stage1": {"budget": 3}}, base=cfg),
                                                    "sft/leafe")


def test_a_preempted_stage_is_not_marked_done(tmp_path, monkeypatch):
    from leafe_jax.agent import pretrain
    from leafe_jax.leafe.pipeline import run_pipeline
    from leafe_jax.train.loop import Preempted

    def preempted(*a, **k):
        raise Preempted("SIGTERM: stopped after step 1")
    monkeypatch.setattr(pretrain, "pretrain_base_policy", preempted)
    with pytest.raises(Preempted):
        run_pipeline(C.tiny(), str(tmp_path), progress=False)
    assert not (tmp_path / "base" / "DONE").exists()
