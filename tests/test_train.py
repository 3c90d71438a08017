"""The shared trainer: loss, exact accumulation, sharded = single device, resume, faults."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from leafe_jax.policy.config import get_config
from leafe_jax.policy.model import create_model
from leafe_jax.sharding import make_mesh, shard_batch
from leafe_jax.train.checkpoint import Checkpointer, CheckpointNotFoundError
from leafe_jax.train.loop import LoopConfig, Preempted, train_loop
from leafe_jax.train.losses import masked_token_loss
from leafe_jax.train.optim import OptimConfig, create_optimizer
from leafe_jax.train.step import train_step

CFG = get_config("test-tiny").replace(vocab_size=32)
OPT = OptimConfig(learning_rate=1e-2, warmup_steps=1, total_steps=10)


def batch(step, B=8, T=12):
    rng = np.random.default_rng(step)
    return {"tokens": jnp.asarray(rng.integers(1, 32, (B, T)), jnp.int32),
            "loss_mask": jnp.asarray(rng.random((B, T)) < 0.4),
            "weight": jnp.asarray(rng.choice([0.5, 1.0], B), jnp.float32)}


def fresh(mesh=None):
    model = create_model(CFG, seed=0, mesh=mesh)
    return model, create_optimizer(model, OPT, mesh)


def params_of(model):
    return jax.tree.map(np.asarray, nnx.state(model, nnx.Param))


def test_masked_loss_hand_worked():
    logits = jnp.log(jnp.array([[[0.5, 0.5], [0.9, 0.1]]]))     # [1, T-1=2, V=2]
    tokens = jnp.array([[0, 1, 0]])
    mask = jnp.array([[False, True, True]])
    loss, m = masked_token_loss(logits, tokens, mask)
    assert float(loss) == pytest.approx((-np.log(0.5) - np.log(0.9)) / 2, rel=1e-6)
    assert float(m["accuracy"]) == pytest.approx(0.5)           # argmax ties pick 0; target 1 wrong
    mask2 = jnp.array([[False, False, True]])
    loss2, _ = masked_token_loss(logits, tokens, mask2, jnp.array([2.0]))
    assert float(loss2) == pytest.approx(-2 * np.log(0.9), rel=1e-6)


def test_accumulation_is_exact():
    m1, o1 = fresh()
    m2, o2 = fresh()
    a = train_step(m1, o1, batch(0), accum=1)
    b = train_step(m2, o2, batch(0), accum=4)
    assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), params_of(m1), params_of(m2))


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_step_equals_single_device(shape):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    m1, o1 = fresh()
    ref = [float(train_step(m1, o1, batch(s))["loss"]) for s in range(2)]
    mesh = make_mesh(shape)
    m2, o2 = fresh(mesh)
    with jax.set_mesh(mesh):
        got = [float(train_step(m2, o2, shard_batch(mesh, batch(s)))["loss"]) for s in range(2)]
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=2e-5), params_of(m1), params_of(m2))
    # the same placement as annotated (specs over size-1 mesh axes are canonicalised)
    for k, spec in ((m2.layers[0].mlp.up.kernel[...], ("fsdp", "tp")),
                    (m2.layers[0].mlp.down.kernel[...], ("tp", "fsdp"))):
        want = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
        assert k.sharding.is_equivalent_to(want, k.ndim) and len(k.sharding.device_set) == 8


def test_kill_and_resume_reaches_the_same_params(tmp_path):
    cfg = LoopConfig(num_steps=6, log_every=1, ckpt_every=2, progress=False)
    m_ref, o_ref = fresh()
    train_loop(m_ref, o_ref, batch, cfg, str(tmp_path / "ref"))
    # stopped by SIGTERM during step 3: it saves at step 3 and returns
    m, o = fresh()

    def batches(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return batch(step)

    with pytest.raises(Preempted, match="stopped after step 3"):
        train_loop(m, o, batches, cfg, str(tmp_path / "run"))
    assert Checkpointer(str(tmp_path / "run" / "checkpoints")).latest_step() == 3
    m2, o2 = fresh()                       # a new process would start from scratch ...
    train_loop(m2, o2, batch, cfg, str(tmp_path / "run"))     # ... and resume from step 3
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), params_of(m_ref), params_of(m2))
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().strip().split("\n")
    assert [int(eval(l)["step"]) for l in lines] == [1, 2, 3, 4, 5, 6]


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    m, o = fresh()

    def batches(step):
        b = batch(step)
        if step == 3:
            b["weight"] = b["weight"] * jnp.nan
        return b

    with pytest.raises(FloatingPointError, match="non-finite loss or gradient at step 4.*step 2"):
        train_loop(m, o, batches, LoopConfig(num_steps=6, log_every=1, ckpt_every=2,
                                             progress=False), str(tmp_path))
    ck = Checkpointer(str(tmp_path / "checkpoints"))
    assert ck.latest_step() == 2
    m2, _ = fresh()
    ck.restore(m2)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params_of(m2)))


def test_missing_checkpoint_and_restore_onto_another_mesh(tmp_path):
    m, o = fresh()
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint"):
        Checkpointer(str(tmp_path / "empty")).restore(m)
    train_step(m, o, batch(0))
    ck = Checkpointer(str(tmp_path / "c"))
    ck.save(1, m, o, {"note": "x"}, force=True)
    ck.wait()
    if jax.device_count() < 8:
        return
    mesh = make_mesh((2, 2, 2))
    m2, o2 = fresh(mesh)
    meta = ck.restore(m2, o2)
    assert meta["note"] == "x" and meta["step"] == 1
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y), params_of(m), params_of(m2))
    assert len(m2.layers[0].attn.q.kernel[...].sharding.device_set) == 8


def test_corrupt_latest_checkpoint_stops_the_loop_and_is_left_alone(tmp_path):
    import glob
    cfg = LoopConfig(num_steps=2, log_every=1, ckpt_every=2, progress=False)
    m, o = fresh()
    train_loop(m, o, batch, cfg, tmp_path)
    files = [f for f in glob.glob(str(tmp_path / "checkpoints" / "2" / "params" / "**" / "d" / "*"),
                                  recursive=True) if os.path.isfile(f)]
    assert files
    for f in files:
        with open(f, "wb") as fh:
            fh.write(b"garbage")
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    m2, o2 = fresh()
    with pytest.raises(ValueError, match="checkpoint step 2 in .* is corrupt or does not match this model"):
        train_loop(m2, o2, batch, LoopConfig(num_steps=4, log_every=1, ckpt_every=1, progress=False),
                   tmp_path)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def _corrupt(step_dir):
    import glob
    files = [f for f in glob.glob(str(step_dir / "params" / "**" / "d" / "*"), recursive=True)
             if os.path.isfile(f)]
    assert files
    for f in files:
        with open(f, "wb") as fh:
            fh.write(b"garbage")


def test_resume_falls_back_to_the_last_intact_step(tmp_path):
    """A truncated latest step: resume warns, keeps it aside, restarts from the step before,
    and ends with the same weights as an uninterrupted run."""
    from leafe_jax.train.checkpoint import load_policy
    cfg = LoopConfig(num_steps=2, log_every=1, ckpt_every=1, progress=False)
    m, o = fresh()
    train_loop(m, o, batch, cfg, tmp_path / "a", meta={"model": CFG.to_dict()})
    ref, ro = fresh()
    train_loop(ref, ro, batch, LoopConfig(num_steps=3, log_every=1, ckpt_every=1, progress=False),
               tmp_path / "ref")
    _corrupt(tmp_path / "a" / "checkpoints" / "2")
    with pytest.raises(ValueError, match="checkpoint step 2 in .*a/checkpoints is corrupt"):
        load_policy(str(tmp_path / "a"))
    m2, o2 = fresh()
    with pytest.warns(UserWarning, match="step 2 .* is corrupt .* resuming from step 1"):
        train_loop(m2, o2, batch, LoopConfig(num_steps=3, log_every=1, ckpt_every=1, progress=False),
                   tmp_path / "a", meta={"model": CFG.to_dict()})
    assert (tmp_path / "a" / "checkpoints" / "2.corrupt").is_dir()       # kept, not deleted
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), params_of(ref), params_of(m2))
    assert load_policy(str(tmp_path / "a"))[1]["step"] == 3


def test_corrupt_checkpoint_metadata_names_the_step(tmp_path):
    from leafe_jax.train.checkpoint import load_policy
    m, o = fresh()
    train_loop(m, o, batch, LoopConfig(num_steps=1, log_every=1, ckpt_every=1, progress=False),
               tmp_path, meta={"model": CFG.to_dict()})
    assert load_policy(str(tmp_path))[1]["step"] == 1
    (tmp_path / "checkpoints" / "1" / "meta" / "metadata").write_text("{garbage")
    with pytest.raises(ValueError, match=r"checkpoint step 1 in .*checkpoints is corrupt"):
        load_policy(str(tmp_path))
    (tmp_path / "checkpoints" / "1" / "meta" / "metadata").write_text('{"model": {"name": 3}}')
    with pytest.raises(ValueError, match=r"checkpoint step 1 has a malformed model config"):
        load_policy(str(tmp_path))


def test_export_params_only(tmp_path):
    import orbax.checkpoint as ocp
    m, o = fresh()
    train_step(m, o, batch(0))
    ck = Checkpointer(str(tmp_path / "c"))
    ck.save(1, m, o, force=True)
    ck.wait()
    out = ck.export_params(tmp_path / "export", model=create_model(CFG, seed=5))
    restored = ocp.StandardCheckpointer().restore(out)
    want = params_of(m)
    got = jax.tree.leaves(restored)
    assert len(got) == len(jax.tree.leaves(want))          # params only: no optimiser moments
    for a, b in zip(jax.tree.leaves(want), got):
        np.testing.assert_allclose(a, np.asarray(b))
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        ck.export_params(tmp_path / "export", model=create_model(CFG, seed=5))


def test_distributed_arguments_must_come_together(monkeypatch):
    from leafe_jax import distributed
    for k in ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "LEAFE_COORDINATOR",
              "LEAFE_NUM_PROCESSES", "LEAFE_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.maybe_initialize() is False            # one host: nothing to do
    with pytest.raises(ValueError, match="need all of coordinator, num_processes and process_id"):
        distributed.maybe_initialize(num_processes=2)
    with pytest.raises(ValueError, match=r"process_id 2 not in \[0, 2\)"):
        distributed.maybe_initialize("localhost:1", 2, 2)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")
    assert distributed.on_multihost_tpu()
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
    assert not distributed.on_multihost_tpu()


def test_remat_changes_memory_not_the_update():
    m1, o1 = fresh()
    model = create_model(CFG.replace(remat=True), seed=0)
    o2 = create_optimizer(model, OPT)
    a = train_step(m1, o1, batch(0))
    b = train_step(model, o2, batch(0))
    assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-6)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), params_of(m1), params_of(model))


def test_logits_at_masked_positions_only_is_the_same_update():
    """``targets``: logits only at the (<= targets) masked positions - the same loss,
    accuracy and update as the full vocabulary at every position (pooled and per dataset)."""
    b = batch(3)
    K = int(np.asarray(b["loss_mask"][:, 1:]).sum(1).max())
    for kw in ({}, {"group_weights": (1.0, 0.5)}):
        bb = b | ({"group": jnp.asarray(np.arange(8) % 2, jnp.int32)} if kw else {})
        m1, o1 = fresh()
        m2, o2 = fresh()
        a = train_step(m1, o1, bb, **kw)
        c = train_step(m2, o2, bb, targets=K + 3, **kw)
        for k in ("loss", "accuracy", "tokens"):
            assert float(a[k]) == pytest.approx(float(c[k]), rel=1e-5), k
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), params_of(m1), params_of(m2))


def test_per_dataset_loss_hand_worked():
    """L = mean over group 0's masked tokens + beta * mean over group 1's (beta = 0.5)."""
    from leafe_jax.train.losses import group_weights_B, masked_token_sums
    p = jnp.array([[[0.5, 0.5], [0.9, 0.1], [0.5, 0.5]],        # example 0 (e2p): 1 target
                   [[0.8, 0.2], [0.9, 0.1], [0.3, 0.7]]])       # example 1 (reh): 3 targets
    tokens = jnp.array([[0, 0, 0, 1], [0, 0, 1, 1]])
    mask = jnp.array([[0, 0, 0, 1], [0, 1, 1, 1]], bool)
    w = group_weights_B(mask, jnp.array([0, 1]), (1.0, 0.5))
    s, aux = masked_token_sums(jnp.log(p), tokens, mask, w)
    want = np.log(2) + 0.5 * np.mean([-np.log(0.8), -np.log(0.1), -np.log(0.7)])
    assert float(s) == pytest.approx(want, rel=1e-6) and float(aux["tokens"]) == 4
    # pooled: one mean over the 4 tokens
    s, aux = masked_token_sums(jnp.log(p), tokens, mask)
    assert float(s / aux["tokens"]) == pytest.approx(
        np.mean([np.log(2), -np.log(0.8), -np.log(0.1), -np.log(0.7)]), rel=1e-6)
    # a group absent from the batch contributes nothing
    w = group_weights_B(mask, jnp.array([1, 1]), (1.0, 0.5))
    assert float(masked_token_sums(jnp.log(p), tokens, mask, w)[0]) == pytest.approx(
        0.5 * np.mean([np.log(2), -np.log(0.8), -np.log(0.1), -np.log(0.7)]), rel=1e-6)


def test_per_dataset_step_matches_its_formula_and_accumulates_exactly():
    b = batch(0) | {"group": jnp.asarray(np.arange(8) % 3 == 0, jnp.int32)}
    coefs = (1.0, 0.25)
    m0, _ = fresh()
    logits = np.asarray(m0(b["tokens"][:, :-1])[0], np.float64)
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(lp, np.asarray(b["tokens"])[:, 1:, None], -1)[..., 0]
    mask, g = np.asarray(b["loss_mask"])[:, 1:], np.asarray(b["group"])
    want = sum(c * ce[g == k][mask[g == k]].mean() for k, c in enumerate(coefs))
    m1, o1 = fresh()
    m2, o2 = fresh()
    a = train_step(m1, o1, b, group_weights=coefs)
    c = train_step(m2, o2, b, accum=2, group_weights=coefs)
    assert float(a["loss"]) == pytest.approx(want, rel=1e-5)
    assert float(c["loss"]) == pytest.approx(want, rel=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), params_of(m1), params_of(m2))
    with pytest.raises(ValueError, match="needs batches with a 'group' field"):
        train_step(*fresh(), batch(0), group_weights=coefs)


def test_scan_layers_changes_memory_not_the_update():
    """``scan_layers`` (lax.scan over the stacked blocks) computes the same logits and the
    same AdamW update as the unrolled layers, with and without remat."""
    for remat in (False, True):
        m1, o1 = fresh()
        model = create_model(CFG.replace(scan_layers=True, remat=remat), seed=0)
        o2 = create_optimizer(model, OPT)
        toks = np.asarray(batch(0)["tokens"])
        np.testing.assert_allclose(np.asarray(model(toks)[0]), np.asarray(m1(toks)[0]), atol=1e-6)
        a = train_step(m1, o1, batch(0))
        b = train_step(model, o2, batch(0))
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-6)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), params_of(m1),
                     params_of(model))


def test_scan_layers_bound_the_gathered_weights_under_fsdp():
    """8-way fsdp, remat on: unrolled, the compiler keeps every layer's gathered weights
    live (the 7B fsdp-64 sizing's 16 GiB); scanned, one layer's at a time."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    cfg = CFG.replace(vocab_size=512, hidden_size=256, intermediate_size=1024, max_seq_len=512,
                      num_layers=8, remat=True)
    unrolled = _compiled_temp_mib((1, 8, 1), cfg, B=8, T=128)
    scanned = _compiled_temp_mib((1, 8, 1), cfg.replace(scan_layers=True), B=8, T=128)
    assert scanned < unrolled / 2, (unrolled, scanned)


def _compiled_temp_mib(shape, cfg, B=16, T=256):
    from leafe_jax.train.sizing import compile_train_step
    mesh = make_mesh(shape, devices=jax.devices()[: int(np.prod(shape))])
    c = compile_train_step(cfg, mesh, B, T, OPT)
    return c.memory_analysis().temp_size_in_bytes / 2 ** 20


def test_fsdp_keeps_activations_batch_sharded():
    """Weights sharded over fsdp along the embedding must not pull activations into their
    layout (replicating the batch): the model constrains activations to the batch axes, so
    an 8-way fsdp step needs about 1/8 of the single-device temporaries, like 8-way data."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    cfg = CFG.replace(vocab_size=512, hidden_size=64, intermediate_size=256, max_seq_len=512)
    one, fsdp, data = (_compiled_temp_mib(s, cfg) for s in ((1, 1, 1), (1, 8, 1), (8, 1, 1)))
    assert fsdp < one / 6 and fsdp < 1.25 * data, (one, fsdp, data)
