"""Where a text policy lives: loaded onto a mesh in a dtype policy (as the TPU config does
for Qwen2.5-7B), exported as a Hugging Face directory with its tokenizer, and the text
pipeline's stages on a mesh. A tiny random model with SmolLM2's real tokenizer stands in
for the pretrained one (its answers never parse; these tests are about placement)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leafe_jax.interfaces.text.pretrain import load_text_policy, load_text_tokenizer
from leafe_jax.policy.tokenizer import Tokenizer
from leafe_jax.sharding import make_mesh
from leafe_jax.train.checkpoint import export_policy


@pytest.fixture(scope="module")
def tok(smollm2_path):
    return Tokenizer.from_gguf(smollm2_path)


@pytest.fixture(scope="module")
def policy_dir(tiny_text_policy):
    return tiny_text_policy


def _logits(model, ids):
    return np.asarray(model(jnp.asarray([ids], jnp.int32))[0], np.float32)


def test_text_policy_on_a_mesh_in_a_dtype_policy(policy_dir, tok):
    """On 8 fake devices (data 2, fsdp 4) the weights are sharded, not copied, and give the
    one-device logits; bf16-mixed keeps float32 weights and computes in bfloat16."""
    ids = tok.encode("<action>left</action> and then up")
    one = load_text_policy(policy_dir)
    want = _logits(one.model, ids)
    mesh = make_mesh((2, 4, 1))
    sharded = load_text_policy(policy_dir, mesh=mesh, dtype="float32")
    emb = sharded.model.embed.embedding[...]
    assert len(emb.sharding.device_set) == 8 and not emb.sharding.is_fully_replicated
    assert sharded.row_multiple == 8 and sharded.mesh is mesh
    with jax.set_mesh(mesh):
        got = _logits(sharded.model, ids)
    np.testing.assert_allclose(got, want, atol=1e-4)
    mixed = load_text_policy(policy_dir, mesh=mesh, dtype="bf16-mixed")
    assert (mixed.model.cfg.param_dtype, mixed.model.cfg.dtype) == ("float32", "bfloat16")
    assert mixed.model.embed.embedding[...].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(mixed.model.embed.embedding[...]), np.asarray(emb))
    with jax.set_mesh(mesh):
        low = _logits(mixed.model, ids)
    assert np.abs(low - want).max() < 0.05 * np.abs(want).max() + 0.05
    # greedy answers on the mesh are the one-device answers (rows padded to the mesh)
    prompts = [tok.encode("Step 1: go"), tok.encode("Step 2: push the box")]
    keys = jax.random.split(jax.random.key(0), 2)
    a = one.generate(prompts, keys, max_new_tokens=6, temperature=0.0)
    b = sharded.generate(prompts, keys, max_new_tokens=6, temperature=0.0)
    for x, y in zip(a.tokens, b.tokens):
        np.testing.assert_array_equal(x, y)


def test_text_policy_exports_as_hf_with_its_tokenizer(policy_dir, tok, tmp_path):
    """``leafe export --format hf`` of a text policy: safetensors + config.json (qwen2: it has
    the q/k/v biases) + the tokenizer and chat template, read back by ``load_pretrained`` to
    the same logits and the same token ids."""
    from leafe_jax.policy.pretrained import load_pretrained
    out = str(tmp_path / "hf")
    assert export_policy(policy_dir, out, fmt="hf") == 3
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
    assert json.load(open(os.path.join(out, "config.json")))["model_type"] == "qwen2"
    model, back = load_pretrained(out)
    ids = tok.encode("<action>down</action>")
    np.testing.assert_allclose(_logits(model, ids), _logits(load_text_policy(policy_dir).model, ids),
                               atol=1e-6)
    chat = [{"role": "user", "content": "Push the box."}]
    assert back.render(chat, add_generation_prompt=True) == tok.render(chat, add_generation_prompt=True)
    for t in (back, load_text_tokenizer(policy_dir), load_text_tokenizer(out)):
        assert t.encode("Step 3, current observation:\n#_X\u221a") == tok.encode(
            "Step 3, current observation:\n#_X\u221a")
    with pytest.raises(FileExistsError):
        export_policy(policy_dir, out, fmt="hf")


def test_text_mesh_config_is_checked():
    from leafe_jax.configs import ConfigError
    from leafe_jax.pipeline import config as PC
    assert PC.from_dict({"experiment": {"agent": "text"}, "text": {"mesh": [1, -1, 1]}}).text.mesh == (1, -1, 1)
    for mesh in ([2, 4], [1, 0, 1], [-1, -1, 1], [-2, 1, 1]):
        with pytest.raises(ConfigError, match="mesh"):
            PC.from_dict({"experiment": {"agent": "text"}, "text": {"mesh": mesh}})
    with pytest.raises(ConfigError, match="dtype"):
        PC.from_dict({"experiment": {"agent": "text"}, "text": {"dtype": "fp8"}})


@pytest.mark.slow
def test_text_pipeline_runs_on_a_mesh(policy_dir, tmp_path):
    """Every text stage on 8 fake devices (data 2, fsdp 4): the BC warm-up, Stage 1, Stage 2
    (the BC control: a random model solves nothing, so LEAFE and rehearsal have no examples),
    GRPO and Pass@k;
    each trained policy is saved with its tokenizer and exports to HF."""
    from leafe_jax.pipeline import config as PC
    from leafe_jax.pipeline.run import run_pipeline
    hf = str(tmp_path / "tiny-hf")
    export_policy(policy_dir, hf, fmt="hf")
    cfg = PC.from_dict({
        "experiment": {"agent": "text", "preset": "verl6x6"},
        "text": {"model": hf, "mesh": [2, 4, 1], "dtype": "float32", "zero_shot": False,
                 "format": {"history_length": 0, "max_new_tokens": 8},
                 "base": {"demo_levels": 2, "sft": {"steps": 1, "batch_size": 8}}},
        "stage1": {"train_levels": 2, "strategies": ["rollback"],
                   "explore": {"budget": 2, "max_depth": 1, "children": 1}},
        "stage2": {"variants": ["rehearsal", "bc"], "sft": {"steps": 1, "batch_size": 8}},
        "baselines": {"methods": ["grpo"], "match_budget": False,
                      "grpo": {"steps": 1, "tasks_per_step": 1, "group_size": 2}},
        "eval": {"levels": 2, "n": 2}})
    wd = str(tmp_path / "run")
    report = run_pipeline(cfg, wd, progress=False)
    assert set(report["passk"]) == {"base", "bc-control", "grpo"}
    for d in ("base", "sft/bc", "baselines/grpo"):
        assert os.path.isdir(os.path.join(wd, d, "tokenizer")), d
    export_policy(os.path.join(wd, "sft", "bc"), str(tmp_path / "out"), fmt="hf")
    assert "tokenizer.json" in os.listdir(tmp_path / "out")


def test_a_response_budget_that_cannot_hold_an_answer_is_refused(tok):
    """<action>left</action> + the end of turn is 8 SmolLM2 tokens: a budget of 7 would cut
    every demonstration and every well-formed answer before its </action>."""
    from leafe_jax.envs.sokoban.presets import get_preset
    from leafe_jax.interfaces.text import format as F
    from leafe_jax.interfaces.text.agent import TextSokoban
    env = get_preset("verl6x6").make_env()
    TextSokoban(env, tok, cfg=F.TextConfig(max_new_tokens=8))
    with pytest.raises(ValueError, match="max_new_tokens = 7 cannot hold an answer"):
        TextSokoban(env, tok, cfg=F.TextConfig(max_new_tokens=7))
