"""Tests for nanoseek.tokenizer and nanoseek.chat_template (CPU, a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models, pre_tokenizers

from nanoseek.chat_template import (
    ASSISTANT_TOKEN,
    BOS_TOKEN,
    CHAT_TEMPLATE,
    EOS_TOKEN,
    PAD_TOKEN,
    THINK_END,
    THINK_START,
    USER_TOKEN,
    render_segments,
    render_text,
    split_reasoning,
)
from nanoseek.tokenizer import (
    MIN_VOCAB_SIZE,
    SPECIAL_TOKENS,
    THINK_TOKENS,
    Tokenizer,
    iter_documents,
    main,
    train_tokenizer,
)

CORPUS = """The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.

def add(a, b):
    return a + b  # 12345 + 67890 = 80235

DeepSeek-R1 thinks before it answers: <think> is where the reasoning goes.
你好，世界！深度求索。 こんにちは。 Привет, мир! 😀🚀 naïve café
"""
RECORDS = [
    {"text": "Question: what is 17 * 23? Answer: 391."},
    {"text": "The answer is 42, because 6 * 7 = 42."},
    {"text": "Emoji 🎉 and CJK 中文 mixed with code: x = [i ** 2 for i in range(10)]"},
]
SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def write_corpus(directory: Path) -> Path:
    """A small .txt + .jsonl corpus (a few KB) under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "a.txt").write_text(CORPUS * 8, encoding="utf-8")
    lines = [json.dumps(r, ensure_ascii=False) for r in RECORDS * 8]
    (directory / "b.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def tok(corpus: Path) -> Tokenizer:
    return train_tokenizer([corpus], vocab_size=600)


@pytest.fixture(scope="module")
def saved(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tok.save_pretrained(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def hf(saved: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(saved))


# ---- training ---------------------------------------------------------------------------


def test_train_small_vocab_deterministic(corpus: Path, tok: Tokenizer) -> None:
    again = train_tokenizer([corpus / "b.jsonl", corpus / "a.txt"], vocab_size=600)
    assert again.fingerprint() == tok.fingerprint()
    assert again.backend.to_str() == tok.backend.to_str()
    assert MIN_VOCAB_SIZE + 50 < tok.vocab_size <= 600
    assert tok.chat_template == CHAT_TEMPLATE


def test_train_hits_exact_vocab_size(corpus: Path) -> None:
    small = train_tokenizer([corpus], vocab_size=300, min_frequency=1)
    assert small.vocab_size == 300


def test_train_with_progress_bar(corpus: Path, tok: Tokenizer) -> None:
    assert train_tokenizer([corpus], 600, progress=True).fingerprint() == tok.fingerprint()


def test_iter_documents(corpus: Path, tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("one\nline two\n\n\nthree\n  \nfour", encoding="utf-8")
    assert list(iter_documents([text])) == ["one\nline two\n", "three\n", "four"]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"body": "x"}\n\n{"body": "y\\nz"}\n', encoding="utf-8")
    assert list(iter_documents([jsonl], text_field="body")) == ["x", "y\nz"]


# ---- encoding ---------------------------------------------------------------------------


def test_specials_are_single_ids(tok: Tokenizer) -> None:
    for token in SPECIAL_TOKENS + THINK_TOKENS:
        assert tok.encode(token) == [tok.token_to_id(token)], token
        assert tok.id_to_token(tok.token_to_id(token)) == token
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert tok.has_think_tokens
    assert tok.encode(THINK_START + THINK_END) == [tok.think_start_id, tok.think_end_id]
    ids = tok.encode(f"{BOS_TOKEN}{THINK_START}hi{THINK_END}{EOS_TOKEN}")
    # <think> tags are not special: they survive skip_special_tokens, as in DeepSeek-R1
    assert tok.decode(ids, skip_special_tokens=True) == f"{THINK_START}hi{THINK_END}"


def test_encode_add_bos_and_batch(tok: Tokenizer) -> None:
    assert tok.encode("hello world", add_bos=True) == [tok.bos_id, *tok.encode("hello world")]
    texts = ["a b c", "", "12345678", "你好"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode("1234567") == tok.encode("123") + tok.encode("456") + tok.encode("7")


def test_tokenizer_without_bos_or_think() -> None:
    backend = BackendTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.add_tokens(["a", "b"])
    bare = Tokenizer(backend)
    assert bare.bos_id is None and not bare.has_think_tokens and bare.think_start_id is None
    with pytest.raises(ValueError, match="no bos_token"):
        bare.encode("ab", add_bos=True)
    with pytest.raises(ValueError, match="cannot render the R1 chat format"):
        bare.render_chat([{"role": "user", "content": "a"}])
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        Tokenizer(backend, eos_token="<eos>")


TEXT = st.lists(
    st.one_of(
        st.text(max_size=30),
        st.sampled_from([" ", "\n", "\n\n", "\t ", "\r\n", "😀", "你好", "123456", "é",
                         "\x00", "\u200b", THINK_START, THINK_END, "<｜", "｜>", "▁"]),
    ),
    max_size=12,
).map("".join)


@SETTINGS
@given(text=TEXT)
def test_roundtrip_property(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


@SETTINGS
@given(text=TEXT)
def test_transformers_encode_decode_match(tok: Tokenizer, hf, text: str) -> None:
    ids = tok.encode(text)
    assert hf.encode(text, add_special_tokens=False) == ids
    assert hf.encode(text) == tok.encode(text, add_bos=True)
    assert hf.decode(ids) == text


# ---- save / load ------------------------------------------------------------------------


def test_save_load_roundtrip(tok: Tokenizer, saved: Path) -> None:
    names = sorted(p.name for p in saved.iterdir())
    assert names == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((saved / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["bos_token"] == BOS_TOKEN and config["add_bos_token"] is True
    assert config["chat_template"] == CHAT_TEMPLATE
    for source in (saved, saved / "tokenizer.json"):
        loaded = Tokenizer.from_pretrained(source)
        assert loaded.fingerprint() == tok.fingerprint()
        assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)


def test_load_hf_written_config_forms(saved: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes((saved / "tokenizer.json").read_bytes())
    config = {
        "bos_token": {"__type": "AddedToken", "content": BOS_TOKEN, "lstrip": False},
        "eos_token": {"content": EOS_TOKEN},
        "pad_token": None,
        "chat_template": [{"name": "default", "template": "{{ 'x' }}"}],
        "legacy": True,
        "tokenizer_class": "LlamaTokenizerFast",
        "model_max_length": 1e30,
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    loaded = Tokenizer.from_pretrained(tmp_path)
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (BOS_TOKEN, EOS_TOKEN, None)
    assert loaded.chat_template == "{{ 'x' }}"
    (tmp_path / "chat_template.jinja").write_text("{{ 'y' }}", encoding="utf-8")
    assert Tokenizer.from_pretrained(tmp_path).chat_template == "{{ 'y' }}"
    # saving replaces the stale chat_template.jinja and keeps unknown config keys
    loaded.chat_template = CHAT_TEMPLATE
    loaded.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text(encoding="utf-8") == CHAT_TEMPLATE
    written = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert written["legacy"] is True and written["pad_token"] is None
    assert Tokenizer.from_pretrained(tmp_path).pad_token is None
    assert written["tokenizer_class"] == "LlamaTokenizerFast"
    assert written["model_max_length"] == int(1e30)
    assert not list(tmp_path.glob(".*.tmp"))


def test_load_without_config_uses_deepseek_names(saved: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes((saved / "tokenizer.json").read_bytes())
    loaded = Tokenizer.from_pretrained(tmp_path)
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (0, 1, 2)
    assert loaded.chat_template is None


# ---- chat format ------------------------------------------------------------------------

SYSTEM = {"role": "system", "content": "You are helpful."}
Q1 = {"role": "user", "content": "What is 1+1?"}
A1_INLINE = {"role": "assistant", "content": "<think>\nadd them\n</think>\n\nIt is 2."}
Q2 = {"role": "user", "content": "And 2+2? 你好 😀"}
A2 = {"role": "assistant", "content": "4", "reasoning_content": "2+2 is 4."}
A_PLAIN = {"role": "assistant", "content": "Sure."}
CONVERSATIONS = {
    "user_only": [Q1],
    "system_user": [SYSTEM, Q1],
    "single_turn_reasoning": [SYSTEM, Q1, A2],
    "inline_reasoning_last": [Q1, A1_INLINE],
    "multi_turn_history_reasoning": [SYSTEM, Q1, A1_INLINE, Q2, A2],
    "history_then_user": [Q1, A1_INLINE, Q2],
    "no_reasoning": [Q1, A_PLAIN, Q2, A_PLAIN],
    "two_systems_late": [Q1, {"role": "system", "content": "Be brief."}, SYSTEM, A_PLAIN],
    "none_content": [Q1, {"role": "assistant", "content": None, "reasoning_content": "r"}],
}


def test_render_format_exact() -> None:
    text = render_text(CONVERSATIONS["multi_turn_history_reasoning"])
    assert text == (
        f"{BOS_TOKEN}You are helpful.{USER_TOKEN}What is 1+1?{ASSISTANT_TOKEN}It is 2.{EOS_TOKEN}"
        f"{USER_TOKEN}And 2+2? 你好 😀{ASSISTANT_TOKEN}<think>\n2+2 is 4.\n</think>\n\n4{EOS_TOKEN}"
    )
    prompt = render_text(CONVERSATIONS["history_then_user"], add_generation_prompt=True)
    assert prompt.endswith(f"{EOS_TOKEN}{USER_TOKEN}And 2+2? 你好 😀{ASSISTANT_TOKEN}<think>\n")
    assert "add them" not in prompt
    assert render_text([Q1], add_generation_prompt=True, thinking=False).endswith(ASSISTANT_TOKEN)
    assert "2+2 is 4" not in render_text([Q1, A2], thinking=False)
    two = render_text(CONVERSATIONS["two_systems_late"])
    assert two.startswith(f"{BOS_TOKEN}Be brief.\n\nYou are helpful.{USER_TOKEN}")


def test_split_reasoning() -> None:
    assert split_reasoning(A1_INLINE) == ("add them", "It is 2.")
    assert split_reasoning(A2) == ("2+2 is 4.", "4")
    assert split_reasoning({"role": "assistant", "content": "a</think>b"}) == ("a", "b")
    assert split_reasoning(A_PLAIN) == ("", "Sure.")


def test_loss_mask_covers_assistant_spans(tok: Tokenizer) -> None:
    ids, mask = tok.render_chat(CONVERSATIONS["multi_turn_history_reasoning"])
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == (
        f"It is 2.{EOS_TOKEN}<think>\n2+2 is 4.\n</think>\n\n4{EOS_TOKEN}"
    )
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if not m]) == (
        f"{BOS_TOKEN}You are helpful.{USER_TOKEN}What is 1+1?{ASSISTANT_TOKEN}"
        f"{USER_TOKEN}And 2+2? 你好 😀{ASSISTANT_TOKEN}"
    )
    ids_last, mask_last = tok.render_chat(CONVERSATIONS["multi_turn_history_reasoning"],
                                          last_turn_only=True)
    assert ids_last == ids
    assert tok.decode([i for i, m in zip(ids, mask_last, strict=True) if m]) == (
        f"<think>\n2+2 is 4.\n</think>\n\n4{EOS_TOKEN}"
    )
    _, prompt_mask = tok.render_chat([Q1], add_generation_prompt=True)
    assert set(prompt_mask) == {0}


def test_generation_prompt_is_prefix_of_training_render(tok: Tokenizer) -> None:
    history = CONVERSATIONS["history_then_user"]
    prompt, _ = tok.render_chat(history, add_generation_prompt=True)
    full, mask = tok.render_chat([*history, A2])
    assert full[: len(prompt)] == prompt
    assert sum(mask[len(prompt) - 2:]) == len(full) - len(prompt) + 2  # <think>, "\n" trained
    prompt_off, _ = tok.render_chat(history, add_generation_prompt=True, thinking=False)
    full_off, _ = tok.render_chat([*history, A_PLAIN], thinking=False)
    assert full_off[: len(prompt_off)] == prompt_off


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("thinking", [True, False])
def test_transformers_chat_template_matches(tok: Tokenizer, hf, name: str, thinking: bool) -> None:
    messages = CONVERSATIONS[name]
    for add_generation_prompt in (False, True):
        if add_generation_prompt and messages[-1]["role"] == "assistant":
            continue
        kwargs = {"add_generation_prompt": add_generation_prompt, "thinking": thinking}
        ours = tok.render_chat(messages, **kwargs)
        theirs = hf.apply_chat_template(messages, return_dict=True,
                                        return_assistant_tokens_mask=True, **kwargs)
        assert hf.apply_chat_template(messages, tokenize=False, **kwargs) == render_text(
            messages, **kwargs)
        assert theirs["input_ids"] == ours.ids
        assert theirs["assistant_masks"] == ours.loss_mask
        assert ours.ids.count(tok.bos_id) == 1


MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXT},
    optional={"reasoning_content": st.one_of(st.none(), TEXT)},
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(MESSAGE, min_size=1, max_size=5), add_generation_prompt=st.booleans(),
       thinking=st.booleans())
def test_chat_template_matches_on_random_chats(
    tok: Tokenizer, hf, messages: list[dict], add_generation_prompt: bool, thinking: bool
) -> None:
    assume(not (add_generation_prompt and messages[-1]["role"] == "assistant"))
    kwargs = {"add_generation_prompt": add_generation_prompt, "thinking": thinking}
    text = render_text(messages, **kwargs)
    assert hf.apply_chat_template(messages, tokenize=False, **kwargs) == text
    ids, mask = tok.render_chat(messages, **kwargs)
    assert ids == tok.encode(text)
    segments = render_segments(messages, **kwargs)
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "".join(
        s.text for s in segments if s.trainable)


@pytest.mark.parametrize(
    ("messages", "kwargs", "match"),
    [
        ([], {}, "empty conversation"),
        ([{"role": "tool", "content": "x"}], {}, "unsupported role"),
        ([{"content": "x"}], {}, "'role' key"),
        ([Q1, A_PLAIN], {"add_generation_prompt": True}, "last message to be from the user"),
        ([{"role": "user", "content": ["part"]}], {}, "must be a string"),
    ],
)
def test_render_errors(tok: Tokenizer, messages: list, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tok.render_chat(messages, **kwargs)


# ---- errors and CLI ---------------------------------------------------------------------


def test_train_errors(tmp_path: Path, corpus: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        train_tokenizer([tmp_path / "missing.txt"], 400)
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer([empty], 400)
    with pytest.raises(ValueError, match=f"need {MIN_VOCAB_SIZE}"):
        train_tokenizer([corpus], MIN_VOCAB_SIZE - 1)
    with pytest.raises(ValueError, match="no input files"):
        train_tokenizer([], 400)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="unsupported file type"):
        train_tokenizer([tmp_path / "x.parquet"], 400)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match=r"has no \.txt"):
        train_tokenizer([tmp_path / "sub"], 400)
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8 text"):
        train_tokenizer([tmp_path / "latin1.txt"], 400)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: no string field 'text'"):
        train_tokenizer([bad], 400)
    bad.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: invalid JSON"):
        train_tokenizer([bad], 400)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"has no tokenizer\.json"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="cannot load a tokenizer"):
        Tokenizer.from_pretrained(tmp_path / "nope.json")
    (tmp_path / "tokenizer.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match=r"not a valid tokenizer\.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_cli(corpus: Path, tok: Tokenizer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli_tok"
    argv = ["train", "--input", str(corpus), "--vocab-size", "600", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    assert Tokenizer.from_pretrained(out).fingerprint() == tok.fingerprint()
    assert main(["encode", "--tokenizer", str(out), "--add-bos", "hello", "world"]) == 0
    printed = capsys.readouterr().out.split()
    assert list(map(int, printed)) == tok.encode("hello world", add_bos=True)
    assert main(["info", "--tokenizer", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vocab_size"] == tok.vocab_size and info["pad"] == [PAD_TOKEN, 2]
    assert info["fingerprint"] == tok.fingerprint()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--input", str(tmp_path / "nope"), "--vocab-size", "600",
              "--out", str(out), "--quiet"])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--vocab-size", "600"])
