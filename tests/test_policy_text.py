"""Text generation with the embedded SmolLM2-135M-Instruct: greedy decoding equals
transformers' greedy ``generate`` token for token (4 chats x 64 new tokens); stop tokens
from the chat template, stop strings, and the model's name resolution."""

import os

import jax
import numpy as np
import pytest

from leafe_jax.policy import pretrained
from leafe_jax.policy.text import default_stop_tokens, encode_prompts, generate_text

CHATS = [[{"role": "user", "content": q}] for q in (
    "What is the capital of France?", "Write a haiku about boxes.", "List three colours.",
    "How do I push a box in Sokoban?")]


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return pretrained.load_pretrained(smollm2_path)


@pytest.mark.slow
def test_greedy_generation_equals_transformers(smollm2):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    model, tok = smollm2
    path = pretrained.resolve("smollm2-135m-instruct")
    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                               dtype=torch.float32)
    ref.generation_config.eos_token_id = None           # 64 tokens whatever comes
    ours = generate_text(model, tok, CHATS, jax.random.key(0), max_new_tokens=64, stop_tokens=())
    for r, ids in enumerate(encode_prompts(tok, CHATS)):
        with torch.no_grad():
            g = ref.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False, pad_token_id=0)
        theirs = g[0, len(ids):].tolist()
        assert len(theirs) == 64 and ours.tokens[r].tolist() == theirs, r
    # stopping: the chat template's end of turn (<|im_end|>) ends the answer
    assert default_stop_tokens(tok) == (tok.token_id("<|im_end|>"),)
    out = generate_text(model, tok, CHATS[:1], jax.random.key(0), max_new_tokens=32)
    assert out.texts == ["The capital of France is Paris."] and out.finished == [True]
    assert out.tokens[0][-1] == tok.token_id("<|im_end|>") and np.all(out.logprobs[0] <= 0)
    cut = generate_text(model, tok, CHATS[:1], jax.random.key(0), max_new_tokens=32, stop=(" is",))
    assert cut.texts == ["The capital of France"]


def test_embedded_model_names(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such model file or directory"):
        pretrained.resolve(str(tmp_path / "nothing"))
    monkeypatch.setitem(pretrained.EMBEDDED, "ghost", ("no_such_package_xyz", "m.gguf", "pip install ghost"))
    with pytest.raises(FileNotFoundError, match="the embedded model 'ghost' is not installed: pip install ghost"):
        pretrained.resolve("ghost")


@pytest.mark.slow
def test_generate_command(capsys, smollm2):
    import json

    from leafe_jax.cli import main

    assert main(["generate", "What is the capital of France?", "--max-new-tokens", "16"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line == {"prompt": "What is the capital of France?", "response": "The capital of France is Paris."}
    assert main(["generate", "hi", "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 4, 1)])       # (8, 1, 1): the tiny-model test covers it
def test_sharded_text_generation_equals_one_device(smollm2, shape):
    """SmolLM2 (9 / 3 heads: tp 1 on 8 devices) with its weights over fsdp and the batch over
    data gives the single-device tokens."""
    from leafe_jax.policy.gguf import load_gguf
    from leafe_jax.sharding import make_mesh

    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    model, tok = smollm2
    chats = CHATS * 2                                   # 8 rows: the data axis divides them
    a = generate_text(model, tok, chats, jax.random.key(0), max_new_tokens=16, stop_tokens=())
    mesh = make_mesh(shape)
    sharded = load_gguf(pretrained.resolve("smollm2-135m-instruct"), mesh=mesh)
    assert len(sharded.layers[0].mlp.up.kernel[...].sharding.device_set) == 8
    with jax.set_mesh(mesh):
        b = generate_text(sharded, tok, chats, jax.random.key(0), max_new_tokens=16, stop_tokens=(),
                          mesh=mesh)
    assert [t.tolist() for t in a.tokens] == [t.tolist() for t in b.tokens]
    np.testing.assert_allclose(np.concatenate(a.logprobs), np.concatenate(b.logprobs), atol=1e-3)


@pytest.mark.slow
def test_export_with_tokenizer_loads_in_transformers(smollm2, tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = smollm2
    out = tmp_path / "hf"
    pretrained.save_pretrained(model, tok, str(out))
    ref_tok = AutoTokenizer.from_pretrained(str(out))
    text = tok.render(CHATS[1], add_generation_prompt=True)
    assert ref_tok.apply_chat_template(CHATS[1], tokenize=False, add_generation_prompt=True) == text
    ids = tok.encode(text)
    assert ref_tok(text, add_special_tokens=False).input_ids == ids
    ref = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits.numpy()
    # the same float32 weights; only reduction order differs (37 tokens, 30 layers, logits ~30)
    assert np.abs(np.asarray(model(np.array([ids]))[0]) - want).max() <= 3e-4
    back, back_tok = pretrained.load_pretrained(str(out))        # and our own loader
    assert back_tok.encode(text) == ids and back.cfg.tie_embeddings
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        pretrained.save_pretrained(model, tok, str(out))


@pytest.mark.slow
def test_multi_turn_chat_reuses_the_cache(smollm2):
    """Turn 2 prefills only its new tokens and gives what a fresh prefill of the whole
    conversation gives."""
    from leafe_jax.policy.text import ChatSession

    model, tok = smollm2
    s = ChatSession(model, tok, capacity=512)
    chats = [list(c) for c in CHATS]
    first = s.reply(chats, jax.random.key(0), max_new_tokens=24)
    p1 = s.prefilled
    for c, text in zip(chats, first.texts):
        c += [{"role": "assistant", "content": text}, {"role": "user", "content": "Say it shorter."}]
    second = s.reply(chats, jax.random.key(1), max_new_tokens=24)
    full = [len(i) for i in encode_prompts(tok, chats)]
    assert s.fresh_starts == 1 and s.rows_reset == 0 and s.prefilled - p1 < 0.5 * sum(full)
    fresh = generate_text(model, tok, chats, jax.random.key(1), max_new_tokens=24)
    assert [t.tolist() for t in second.tokens] == [t.tolist() for t in fresh.tokens]


def test_chat_session_resets_only_rows_whose_history_changed(smollm2):
    from leafe_jax.policy.text import ChatSession

    model, tok = smollm2
    s = ChatSession(model, tok, capacity=256)
    chats = [list(c) for c in CHATS[:2]]
    first = s.reply(chats, jax.random.key(0), max_new_tokens=4)
    chats[0] += [{"role": "assistant", "content": first.texts[0]}, {"role": "user", "content": "Again."}]
    chats[1] += [{"role": "assistant", "content": "Something else entirely."},   # not what it said
                 {"role": "user", "content": "Again."}]
    second = s.reply(chats, jax.random.key(1), max_new_tokens=4)
    assert s.fresh_starts == 1 and s.rows_reset == 1
    fresh = generate_text(model, tok, chats, jax.random.key(1), max_new_tokens=4)
    assert [t.tolist() for t in second.tokens] == [t.tolist() for t in fresh.tokens]


def _stand_in_gcs(monkeypatch, root):
    """``gs://`` served from a local directory: etils.epath's own fsspec backend, with the
    GCS filesystem replaced by a local one that maps ``gs://bucket/x`` to ``root/bucket/x``."""
    from etils.epath import backend, gpath
    from fsspec.implementations.local import LocalFileSystem

    class StandInGCS(LocalFileSystem):
        @classmethod
        def _strip_protocol(cls, path):
            path = str(path)
            return str(root / path[len("gs://"):]) if path.startswith("gs://") else super()._strip_protocol(path)

    fs = StandInGCS()
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    monkeypatch.setattr(backend.fsspec_backend, "fs", lambda path: fs)


def test_models_load_from_gs_paths_through_the_local_cache(smollm2, smollm2_path, tmp_path, monkeypatch):
    import shutil

    model, tok = smollm2
    bucket = tmp_path / "gcs"
    _stand_in_gcs(monkeypatch, bucket)
    monkeypatch.setenv("LEAFE_MODEL_CACHE", str(tmp_path / "cache"))
    (bucket / "bkt" / "gguf").mkdir(parents=True)
    shutil.copy(smollm2_path, bucket / "bkt" / "gguf" / "m.gguf")
    pretrained.save_pretrained(model, tok, str(bucket / "bkt" / "hf"))
    ids = np.array([tok.encode("Push the box onto the target.")])
    want = np.asarray(model(ids)[0])
    for uri in ("gs://bkt/gguf/m.gguf", "gs://bkt/hf"):
        got, got_tok = pretrained.load_pretrained(uri)
        np.testing.assert_allclose(np.asarray(got(ids)[0]), want, atol=1e-5)
        assert got_tok.encode("Push the box onto the target.") == ids[0].tolist()
    local = pretrained.resolve("gs://bkt/hf")
    assert local == str(tmp_path / "cache" / "gs" / "bkt" / "hf")
    assert sorted(os.listdir(local)) == sorted(os.listdir(bucket / "bkt" / "hf"))   # no .partial left
    stamp = os.stat(os.path.join(local, "model.safetensors")).st_mtime_ns
    assert pretrained.resolve("gs://bkt/hf") == local           # a second call copies nothing
    assert os.stat(os.path.join(local, "model.safetensors")).st_mtime_ns == stamp
    with pytest.raises(FileNotFoundError, match="gs://bkt/none: no such remote model"):
        pretrained.resolve("gs://bkt/none")


def test_text_generation_does_not_retrace(smollm2):
    """Other prompts of other lengths (in the same bucket) and other keys reuse the compiled
    prefill and decode: a sweep over prompts compiles once."""
    from leafe_jax.policy.sampler import decode, prefill

    model, tok = smollm2
    generate_text(model, tok, ["Hello", "Name a colour"], jax.random.key(0), max_new_tokens=4)
    generate_text(model, tok, CHATS[:2], jax.random.key(0), max_new_tokens=4)   # the 32-bucket
    sizes = prefill._cache_size(), decode._cache_size()
    generate_text(model, tok, ["Sokoban is a puzzle about", "Hi"], jax.random.key(1), max_new_tokens=4)
    generate_text(model, tok, CHATS[2:], jax.random.key(2), max_new_tokens=4)
    assert (prefill._cache_size(), decode._cache_size()) == sizes
