"""Tokenizers and chat templates: the packaged SmolLM2 GGUF's tokenizer equals transformers'
(ids, rendered chats), assistant spans of a chat, a locally trained HF-directory tokenizer
round-trips, and bad tokenizers are named."""

import json
import os

import numpy as np
import pytest

from leafe_jax.policy.tokenizer import Tokenizer, TokenizerError

CHATS = [
    [{"role": "user", "content": "Push the box left, then up."},
     {"role": "assistant", "content": "<action>left</action>"}],
    [{"role": "system", "content": "You play Sokoban."},
     {"role": "user", "content": "Grid:\n#####\n#P X#\n#####\nWhat now? (2 moves, 100%)"},
     {"role": "assistant", "content": "I move right twice."},
     {"role": "user", "content": "Déjà vu — 12345 ünïcödé 🙂 tabs\tand  spaces"},
     {"role": "assistant", "content": "Ok.\n\nDone."}],
]


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return smollm2_path


@pytest.mark.slow
def test_gguf_tokenizer_equals_transformers(smollm2):
    from transformers import AutoTokenizer

    ours = Tokenizer.from_gguf(smollm2)
    ref = AutoTokenizer.from_pretrained(os.path.dirname(smollm2), gguf_file=os.path.basename(smollm2))
    assert ours.vocab_size == len(ref.get_vocab()) == 49152
    for chat in CHATS:
        for gen in (False, True):
            msgs = chat[:-1] if gen else chat
            text = ours.render(msgs, add_generation_prompt=gen)
            assert text == ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            ids, _ = ours.encode_chat(msgs, add_generation_prompt=gen)
            assert ids.tolist() == ref(text, add_special_tokens=False).input_ids
            assert ours.decode(ids) == text
    assert ours.token_id("<|im_end|>") == 2 and ours.decode([2], skip_special=True) == ""


def test_assistant_spans(smollm2):
    tok = Tokenizer.from_gguf(smollm2)
    ids, mask = tok.encode_chat(CHATS[1])
    # contiguous masked runs, one per assistant message: its content, <|im_end|> and the newline
    runs, prev = [], False
    for i, m in zip(ids, mask):
        if m and not prev:
            runs.append([])
        if m:
            runs[-1].append(int(i))
        prev = m
    assert [tok.decode(r) for r in runs] == ["I move right twice.<|im_end|>\n", "Ok.\n\nDone.<|im_end|>\n"]


def test_hf_directory_tokenizer_round_trips(tmp_path):
    from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers

    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["push the box", "the box is on the target", "move left up down right"] * 20,
                            trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": {"content": "</s>"},
        "chat_template": "{% for m in messages %}{{ bos_token + m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ bos_token + 'assistant: ' }}{% endif %}"}))
    t = Tokenizer.from_hf(str(tmp_path))
    for s in ("push the box left", "ünïcödé 🙂 and\nnewlines"):
        assert t.decode(t.encode(s)) == s
    chat = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "left"}]
    assert t.render(chat) == "<s>user: go</s><s>assistant: left</s>"
    ids, mask = t.encode_chat(chat)
    assert t.decode(ids[mask]) == " left</s>" and t.token_id("</s>") == 1   # the space rides on "left"
    with pytest.raises(TokenizerError, match=r"tokens, but the model embeds only 64"):
        t.check_model(64)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{garbage")
    with pytest.raises(TokenizerError, match=r"bad/tokenizer.json: unreadable tokenizer"):
        Tokenizer.from_hf(str(tmp_path / "bad"))
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer.from_hf(str(tmp_path / "nowhere"))


def test_unsupported_gguf_tokenizers_are_named(tmp_path):
    gguf = pytest.importorskip("gguf")
    for model, pre, msg in (("llama", "default", "tokenizer model 'llama' is not supported"),
                            ("gpt2", "qwen2", "pre-tokenizer 'qwen2' is not supported yet")):
        w = gguf.GGUFWriter(str(tmp_path / f"{model}-{pre}.gguf"), "llama")
        w.add_tokenizer_model(model)
        w.add_tokenizer_pre(pre)
        w.add_token_list(["a", "b"])
        w.add_tensor("x", np.zeros(2, np.float32))
        w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
        with pytest.raises(TokenizerError, match=msg):
            Tokenizer.from_gguf(str(tmp_path / f"{model}-{pre}.gguf"))
