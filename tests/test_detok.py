"""Tests for nanoseek.infer.detok with a real byte-level BPE trained on a tiny corpus."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanoseek.infer.detok import IncrementalDetokenizer
from nanoseek.tokenizer import Tokenizer, train_tokenizer

CORPUS = """hello world, hello there. hello hello hello world world.
Hello again: naïve café, résumé, São Paulo, Zürich.

你好，世界！深度求索。你好你好。 こんにちは。 Привет, мир!
Emoji: 😀 🚀 🎉 👍🏽 ❤️ and the family 👨‍👩‍👧 too.

The quick brown fox jumps over the lazy dog. <think> reasoning </think> answer.
"""
SAMPLE_TEXT = "hello 😀 world 🦀 你好 café 👨‍👩‍👧 naïve Привет 🎉!"
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    corpus.write_text(CORPUS * 4, encoding="utf-8")
    return train_tokenizer([corpus], vocab_size=400)


def stream(tokenizer, ids, chunk=1, **kwargs) -> tuple[list[str], IncrementalDetokenizer]:
    """Feed ``ids`` in chunks; return the deltas (``finish()``'s last) and the detokenizer."""
    detok = IncrementalDetokenizer(tokenizer, **kwargs)
    deltas = [detok.add(ids[i:i + chunk]) for i in range(0, len(ids), chunk)]
    return [*deltas, detok.finish()], detok


def reference(text: str, stops, include: bool) -> str:
    """The full text cut at the stop string that ends first (then the longest)."""
    found = [(text.find(s) + len(s), text.find(s), s) for s in stops if s in text]
    if not found:
        return text
    end, start, _ = min(found)
    return text[:end if include else start]


def test_split_characters_come_out_whole(tokenizer):
    ids = tokenizer.encode(SAMPLE_TEXT)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # the tokenizer does split them
    deltas, detok = stream(tokenizer, ids)
    for count in range(1, len(deltas) + 1):
        prefix = "".join(deltas[:count])
        assert "\ufffd" not in prefix and SAMPLE_TEXT.startswith(prefix)
    assert "".join(deltas) == SAMPLE_TEXT == detok.text
    assert " 😀" in deltas and " 🦀" in deltas  # each emoji arrives whole, in one delta
    assert deltas[-1] == "" and not detok.stopped


def test_special_tokens_skipped_or_shown(tokenizer):
    ids = [tokenizer.bos_id, *tokenizer.encode("hello 😀"), tokenizer.eos_id]
    assert "".join(stream(tokenizer, ids)[0]) == "hello 😀"
    shown = "".join(stream(tokenizer, ids, skip_special_tokens=False)[0])
    assert shown == tokenizer.decode(ids) and shown.endswith(tokenizer.eos_token)


def test_prompt_context_is_not_repeated(tokenizer):
    prompt = tokenizer.encode("Question: say hello")
    output = tokenizer.encode(" world 🚀 done")
    deltas, _ = stream(tokenizer, output, prompt_ids=prompt)
    assert "".join(deltas) == " world 🚀 done"
    # a prompt ending inside a character: its bytes are not glued onto the output
    emoji = tokenizer.encode("😀")
    deltas, _ = stream(tokenizer, emoji[1:] + tokenizer.encode("ok"), prompt_ids=emoji[:1])
    assert "".join(deltas) == tokenizer.decode(emoji[1:] + tokenizer.encode("ok"))


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_across_token_boundaries(tokenizer, include):
    text = "hello world 😀 café hello there"
    ids = tokenizer.encode(text)
    stop = "orld 😀 ca"  # spans several tokens, including the emoji's byte tokens
    deltas, detok = stream(tokenizer, ids, stop=[stop, "never"],
                           include_stop_str_in_output=include)
    expected = "hello w" + (stop if include else "")
    assert "".join(deltas) == expected == detok.text
    assert detok.stopped and detok.stop_reason == stop
    detok, emitted = IncrementalDetokenizer(tokenizer, stop=stop), ""
    for token in ids:  # no part of the stop string leaks out before it completes
        emitted += detok.add([token])
        assert detok.stopped or "hello w".startswith(emitted)
    detok = IncrementalDetokenizer(tokenizer, stop=stop)
    assert detok.add(ids) == "hello w" and detok.stopped
    assert detok.add(tokenizer.encode(" more")) == "" and detok.finish() == ""


def test_stop_inside_the_first_token(tokenizer):
    (hello,) = tokenizer.encode("hello")
    detok = IncrementalDetokenizer(tokenizer, stop="ell")
    assert detok.add([hello]) == "h" and detok.stopped and detok.stop_reason == "ell"
    detok = IncrementalDetokenizer(tokenizer, stop=["ell"], include_stop_str_in_output=True)
    assert detok.add([hello]) == "hell"


def test_held_stop_prefix_is_released(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, stop=["hello world!"])
    assert detok.add(tokenizer.encode("say hello")) == "say "  # "hello" may start the stop
    assert detok.add(tokenizer.encode(" world")) == ""
    assert detok.add(tokenizer.encode(".")) == "hello world."
    assert detok.add(tokenizer.encode(" hello")) == " "
    assert detok.finish() == "hello" and not detok.stopped


def test_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="stop"):
        IncrementalDetokenizer(tokenizer, stop=[""])
    detok = IncrementalDetokenizer(tokenizer)
    detok.finish()
    with pytest.raises(RuntimeError, match="finish"):
        detok.add([5])


@SETTINGS
@given(data=st.data(), chunk=st.integers(1, 4), skip=st.booleans(), include=st.booleans())
def test_deltas_concatenate_to_the_full_decode(tokenizer, data, chunk, skip, include):
    """Any ids (byte tokens, specials, merges), any chunking, stops taken from the text."""
    ids = data.draw(st.lists(st.integers(0, tokenizer.vocab_size - 1), max_size=30), label="ids")
    prompt = data.draw(st.lists(st.integers(0, tokenizer.vocab_size - 1), max_size=8),
                       label="prompt")
    full = tokenizer.decode(ids, skip_special_tokens=skip)
    stops = []
    for _ in range(data.draw(st.integers(0, 2), label="n_stops")):
        start = data.draw(st.integers(0, max(len(full) - 1, 0)))
        length = data.draw(st.integers(1, 6))
        stops.append(full[start:start + length] or "zz")
    stops += data.draw(st.lists(st.sampled_from(["hello", "\ufffd", "o w", "</think>"]),
                                max_size=1), label="fixed_stops")
    deltas, detok = stream(tokenizer, ids, chunk=chunk, prompt_ids=prompt,
                           skip_special_tokens=skip, stop=stops,
                           include_stop_str_in_output=include)
    expected = reference(full, stops, include)
    assert "".join(deltas) == expected == detok.text
    assert detok.stopped == any(s in full for s in stops)
