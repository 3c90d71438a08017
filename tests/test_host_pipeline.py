"""The pipeline with a language model in a host env: the pipeline's runners on the toy env
with the scripted generator, and the whole pipeline on MBPP (transfer: HumanEval) with a tiny
random model - placement and plumbing, not numbers."""

import json
import os
import pathlib

import jax
import numpy as np
import pytest

from leafe_jax.envs.host.protocol import EnvSpec
from leafe_jax.interfaces.host import format as HF
from leafe_jax.interfaces.host.agent import HostTextAgent
from leafe_jax.pipeline import config as PC

MBPP = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mbpp" / "mbpp.jsonl"


def test_host_config_is_checked():
    from leafe_jax.configs import ConfigError
    for d, msg in [({"host": {"env": "humaneval"}}, "has no split 'train'"),
                   ({"host": {"env": "scienceworld", "eval_split": "validation"}}, "eval_split"),
                   ({}, "needs the path of mbpp.jsonl"),
                   ({"host": {"data": "x", "transfer_env": "webshop"}}, "transfer_env"),
                   ({"host": {"data": "x"}, "stage1": {"strategies": ["rollback", "rollback_oracle"]}},
                    "no oracle reflector"),
                   ({"host": {"data": "x"}, "stage1": {"explore": {"interrupt_every": 3}}}, "on failure only")]:
        with pytest.raises(ConfigError, match=msg):
            PC.from_dict({**d, "experiment": {"agent": "host"}})
    c = PC.from_dict({"experiment": {"agent": "host"}, "host": {"env": "twc", "eval_split": "dev"}})
    assert c.lm is c.host and c.host.format.max_steps == 20


def test_pipeline_runners_take_the_host_agent(smollm2_path, tmp_path):
    """Stage 1, the dataset and Pass@k runners on the toy env with the scripted generator."""
    from leafe_jax.pipeline import runners
    from leafe_jax.policy.tokenizer import Tokenizer
    from test_host_agent import Scripted
    tok = Tokenizer.from_gguf(smollm2_path)
    agent = HostTextAgent(EnvSpec("host_toys:Counter", {"marks": str(tmp_path)}), tok,
                          HF.HostTextConfig(max_steps=6, max_new_tokens=16), workers=2)
    try:
        cfg = PC.from_dict({"experiment": {"agent": "host"}, "host": {"data": "x"},
                            "stage1": {"train_levels": 4, "strategies": ["rollback", "rollback_self"],
                                       "explore": {"budget": 4, "max_depth": 2, "children": 1}},
                            "eval": {"levels": 4, "n": 2}})
        for s in ("rollback", "rollback_self"):
            runners.stage1(agent, Scripted(tok), np.arange(4), cfg, s, str(tmp_path / s), progress=False)
        st = json.load(open(tmp_path / "rollback" / "stats.json"))
        assert st["successful_branches"] > 0 and st["session"]["replay_steps"] > 0
        assert json.load(open(tmp_path / "rollback_self" / "stats.json"))["reflector"]["asked"] > 0
        runners.dataset(agent, str(tmp_path / "rollback"), "leafe", cfg, str(tmp_path / "data"))
        ds = json.load(open(tmp_path / "data" / "stats.json"))
        assert ds["e2p"] > 0 and ds["max_targets"] > 0
        runners.evaluate(agent, Scripted(tok), np.array([3, 2, 3, 2]), cfg, jax.random.key(0),
                         str(tmp_path / "eval"), progress=False)
        assert np.load(tmp_path / "eval" / "success.npy").shape == (4, 2)
    finally:
        agent.close()


@pytest.mark.slow
def test_host_pipeline_end_to_end_on_mbpp(tiny_text_hf, tmp_path):
    """BC warm-up on MBPP reference solutions, Stage 1 (the random model's answers run as
    programs and fail), the BC control, GRPO, Pass@k on the MBPP test split and the
    HumanEval transfer, the report; a rerun skips every stage."""
    if not MBPP.is_file():
        pytest.skip(f"the MBPP copy is not at {MBPP}")
    from leafe_jax.pipeline.run import run_pipeline
    cfg = PC.from_dict({
        "experiment": {"agent": "host"},
        "host": {"env": "mbpp", "data": str(MBPP), "transfer_env": "humaneval", "model": tiny_text_hf,
                 "zero_shot": False, "workers": 2,
                 "format": {"max_steps": 2, "history_length": 1, "max_new_tokens": 160, "obs_tokens": 256},
                 "base": {"demo_levels": 2, "sft": {"steps": 1, "batch_size": 2}}},
        "stage1": {"train_levels": 2, "strategies": ["rollback"],
                   "explore": {"budget": 2, "max_depth": 1, "children": 1}},
        "stage2": {"variants": ["leafe", "bc"], "sft": {"steps": 1, "batch_size": 2}},
        "baselines": {"methods": ["grpo"], "match_budget": False,
                      "grpo": {"steps": 1, "tasks_per_step": 1, "group_size": 2}},
        "eval": {"levels": 2, "n": 2}})
    wd = str(tmp_path / "run")
    report = run_pipeline(cfg, wd, progress=False)
    assert set(report["passk"]) == {"base", "bc-control", "grpo"}
    warm = json.load(open(os.path.join(wd, "base", "warmup.json")))
    # task 601's reference takes 180 tokens: over the 160-token budget, left out and counted
    assert (warm["answers_too_long"], warm["demonstrations_won"], warm["examples"]) == (1, 1, 1)
    st = json.load(open(os.path.join(wd, "stage1", "rollback", "stats.json")))
    assert st["session"]["turns"] > 0 and st["env_steps"] > 0
    assert np.load(os.path.join(wd, "eval_transfer", "grpo", "success.npy")).shape == (2, 2)
    assert os.path.exists(os.path.join(wd, "eval_transfer", "passk.json"))
    timings = json.load(open(os.path.join(wd, "timings.json")))
    run_pipeline(cfg, wd, progress=False)
    assert json.load(open(os.path.join(wd, "timings.json"))) == timings
