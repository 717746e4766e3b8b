"""Tests for nanoseek.infer.sampling (CPU, a few seconds)."""

from __future__ import annotations

import math

import pytest
import torch

from nanoseek.infer.sampling import (
    MAX_LOGPROBS,
    SamplerState,
    SamplingParams,
    process_logits,
    sample,
    speculative_accept,
    speculative_accept_greedy,
)

V = 50


def states_for(params: SamplingParams, count: int, **kwargs) -> list[SamplerState]:
    return [SamplerState(params, **kwargs) for _ in range(count)]


def total_variation(counts: torch.Tensor, probs: torch.Tensor) -> float:
    return 0.5 * float((counts / counts.sum() - probs).abs().sum())


# ---- SamplingParams -------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("n", 0), ("temperature", -0.1), ("temperature", math.nan), ("top_p", 0.0), ("top_p", 1.5),
    ("top_k", -2), ("min_p", 1.5), ("presence_penalty", 2.5), ("frequency_penalty", -2.1),
    ("repetition_penalty", 0.0), ("max_tokens", 0), ("min_tokens", -1), ("logprobs", -1),
    ("logprobs", MAX_LOGPROBS + 1), ("seed", 1.5), ("stop", [""]), ("stop_token_ids", [-1]),
    ("n", True),
])
def test_params_reject_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_params_defaults_and_normalization():
    params = SamplingParams(stop="###", stop_token_ids=(7,), top_k=-1)
    assert params.stop == ["###"] and params.stop_token_ids == [7]
    assert SamplingParams().max_tokens == 16 and not SamplingParams().greedy
    assert SamplingParams(temperature=0).greedy
    assert SamplingParams(max_tokens=None).max_tokens is None
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(min_tokens=5, max_tokens=4)


# ---- greedy and processing ------------------------------------------------------------------


def test_greedy_is_argmax_with_ties_to_lowest_id():
    logits = torch.zeros(2, V)
    logits[0, [7, 3, 30]] = 5.0
    logits[1, 11] = 1.0
    result = sample(logits, states_for(SamplingParams(temperature=0), 2))
    assert result.token_ids.tolist() == [3, 11]


def test_greedy_still_applies_penalties():
    logits = torch.zeros(1, V)
    logits[0, 4], logits[0, 9] = 2.0, 1.5
    state = SamplerState(SamplingParams(temperature=0, presence_penalty=1.0))
    state.append(4)
    assert sample(logits, [state]).token_ids.tolist() == [9]


def test_process_logits_matches_transformers_processors():
    hf = pytest.importorskip("transformers.generation.logits_process")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, V, generator=generator) * 3
    prompt, output = [1, 2, 3, 40], [5, 5, 41, 2]
    settings = [dict(repetition_penalty=1.3, temperature=0.7, top_k=10),
                dict(repetition_penalty=0.8, temperature=1.3, top_p=0.8),
                dict(temperature=0.9, top_k=20, top_p=0.9, min_p=0.05)]
    states = []
    for kwargs in settings:
        state = SamplerState(SamplingParams(**kwargs), prompt_token_ids=prompt)
        for token in output:
            state.append(token)
        states.append(state)
    ours = process_logits(logits, states)
    input_ids = torch.tensor([prompt + output])
    for row, kwargs in enumerate(settings):
        scores = logits[row:row + 1].clone()
        processors = [hf.RepetitionPenaltyLogitsProcessor(kwargs.get("repetition_penalty", 1.0)),
                      hf.TemperatureLogitsWarper(kwargs["temperature"])]
        if "top_k" in kwargs:
            processors.append(hf.TopKLogitsWarper(kwargs["top_k"]))
        if "top_p" in kwargs:
            processors.append(hf.TopPLogitsWarper(kwargs["top_p"]))
        if "min_p" in kwargs:
            processors.append(hf.MinPLogitsWarper(kwargs["min_p"]))
        for processor in processors:
            scores = processor(input_ids, scores)
        torch.testing.assert_close(ours[row], scores[0])


def test_frequency_and_presence_penalties_count_output_tokens_only():
    logits = torch.zeros(1, V)
    state = SamplerState(SamplingParams(frequency_penalty=0.5, presence_penalty=0.25),
                         prompt_token_ids=[8, 8, 8])
    for token in (2, 2, 2, 6):
        state.append(token)
    processed = process_logits(logits, [state])[0]
    assert processed[2].item() == pytest.approx(-1.75)
    assert processed[6].item() == pytest.approx(-0.75)
    assert processed[8].item() == 0.0
    # speculative drafts counted through `pending`
    assert process_logits(logits, [state], pending=[[6]])[0, 6].item() == pytest.approx(-1.25)


def test_top_k_top_p_min_p_restrict_the_support():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.06, 0.04]]))
    support = [
        (SamplingParams(top_k=2), [0, 1]),
        (SamplingParams(top_p=0.69), [0, 1]),
        (SamplingParams(top_p=0.71), [0, 1, 2]),
        (SamplingParams(min_p=0.45), [0, 1, 2]),
        (SamplingParams(top_k=3, top_p=0.5), [0, 1]),
    ]
    for params, expected in support:
        kept = process_logits(logits, [SamplerState(params)])[0].isfinite().nonzero()
        assert kept.flatten().tolist() == expected, params


def test_min_tokens_masks_eos_and_stop_ids_until_reached():
    params = SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[7])
    state = SamplerState(params, eos_token_id=[1, 3])
    logits = torch.zeros(1, V)
    logits[0, [1, 3, 7]] = 10.0
    logits[0, 20] = 1.0
    assert sample(logits, [state]).token_ids.item() == 20
    assert state.append(20) is None
    state.append(20)  # two out: EOS allowed again
    assert sample(logits, [state]).token_ids.item() == 1
    ignoring = SamplerState(SamplingParams(temperature=0, min_tokens=1, ignore_eos=True),
                            eos_token_id=1)
    assert sample(logits, [ignoring]).token_ids.item() == 1


def test_append_reports_finish_reasons():
    state = SamplerState(SamplingParams(max_tokens=3, stop_token_ids=[9]), eos_token_id=1)
    assert state.append(5) is None
    assert state.append(9) == "stop" and state.stop_reason == 9
    eos = SamplerState(SamplingParams(), eos_token_id=1)
    assert eos.append(1) == "stop" and eos.stop_reason is None
    assert SamplerState(SamplingParams(ignore_eos=True), eos_token_id=1).append(1) is None
    length = SamplerState(SamplingParams(max_tokens=2, min_tokens=2), eos_token_id=1)
    assert length.append(1) is None  # EOS before min_tokens does not stop
    assert length.append(4) == "length"
    assert SamplerState(SamplingParams(max_tokens=None)).append(3) is None


# ---- randomness -----------------------------------------------------------------------------


def run_stream(logits_fn, states: list[SamplerState], steps: int, **kwargs) -> list[list[int]]:
    """Sample ``steps`` tokens for all states together; return each state's tokens."""
    for step in range(steps):
        logits = torch.stack([logits_fn(state, step) for state in states])
        for state, token in zip(states, sample(logits, states, **kwargs).token_ids.tolist(),
                                strict=True):
            state.append(token)
    return [state.output_token_ids for state in states]


def toy_logits(state: SamplerState, step: int) -> torch.Tensor:
    """Logits that depend on the sequence's own history only (a fake model)."""
    last = state.output_token_ids[-1] if state.output_token_ids else state.seed % V
    return torch.sin(torch.arange(V) * (last + 1) * 0.37 + step) * 3


def test_seeded_request_is_independent_of_batch_composition():
    target = SamplingParams(temperature=0.8, top_p=0.95, seed=1234, presence_penalty=0.3)
    alone = run_stream(toy_logits, [SamplerState(target)], steps=12)[0]
    others = [SamplingParams(temperature=0), SamplingParams(temperature=1.2, top_k=5),
              SamplingParams(temperature=0.5, repetition_penalty=1.2, seed=7),
              SamplingParams(min_p=0.1)]
    for batch in ([0, 1], [2, 0, 3], [3, 2, 1, 0]):
        states = [SamplerState(others[i]) for i in batch]
        position = len(states) // 2
        states.insert(position, SamplerState(target))
        assert run_stream(toy_logits, states, steps=12)[position] == alone
    assert len(set(alone)) > 1


def test_seeds_reproduce_and_differ():
    def stream(params: SamplingParams, index: int = 0) -> list[int]:
        state = SamplerState(params, sample_index=index)
        return run_stream(lambda s, t: torch.zeros(V), [state], steps=20)[0]

    assert stream(SamplingParams(seed=5)) == stream(SamplingParams(seed=5))
    assert stream(SamplingParams(seed=5)) != stream(SamplingParams(seed=6))
    assert stream(SamplingParams(seed=5), index=1) == stream(SamplingParams(seed=6))
    assert stream(SamplingParams()) != stream(SamplingParams())  # fresh random seeds
    assert SamplerState(SamplingParams(seed=5), sample_index=2).seed == 7


def test_samples_follow_the_tempered_truncated_distribution():
    logits = torch.log(torch.tensor([0.35, 0.25, 0.2, 0.1, 0.06, 0.04]))
    rows = 6000
    for params, expected in [
        (SamplingParams(temperature=0.7), torch.softmax(logits / 0.7, dim=-1)),
        (SamplingParams(top_k=3), torch.tensor([0.35, 0.25, 0.2, 0, 0, 0]) / 0.8),
    ]:
        states = [SamplerState(params) for _ in range(rows)]
        tokens = sample(logits.expand(rows, -1), states).token_ids
        counts = torch.bincount(tokens, minlength=len(logits)).float()
        assert total_variation(counts, expected) < 0.03, params


def test_logprobs_raw_processed_and_top_alternatives():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, V, generator=generator)
    params = [SamplingParams(temperature=0.5, top_k=4, logprobs=0, seed=0),
              SamplingParams(temperature=0, logprobs=3), SamplingParams(logprobs=None, seed=1)]
    states = [SamplerState(p) for p in params]
    raw = sample(logits, states)
    raw_expected = logits.log_softmax(-1).gather(1, raw.token_ids[:, None]).squeeze(1)
    torch.testing.assert_close(raw.logprobs, raw_expected)
    top_ids, top_values = raw.top_logprobs
    assert top_ids.shape == (3, 3)
    torch.testing.assert_close(top_values, logits.log_softmax(-1).topk(3).values)
    assert top_ids[1, 0] == raw.token_ids[1]  # greedy: the sampled token is the top one
    states = [SamplerState(p) for p in params]
    processed = sample(logits, states, logprobs_mode="processed")
    expected = process_logits(logits, states).log_softmax(-1)
    torch.testing.assert_close(processed.logprobs,
                               expected.gather(1, processed.token_ids[:, None]).squeeze(1))
    assert torch.equal(processed.token_ids, raw.token_ids)  # same seeds, same tokens
    assert processed.logprobs[0] > raw.logprobs[0]  # tempered + top-4 is sharper
    assert sample(logits[2:], states[2:]).top_logprobs is None
    with pytest.raises(ValueError, match="logprobs_mode"):
        sample(logits, states, logprobs_mode="softmax")


# ---- speculative acceptance -----------------------------------------------------------------


def test_speculative_greedy_equals_plain_greedy_decoding():
    generator = torch.Generator().manual_seed(3)
    bigram = torch.randn(V, V, generator=generator) * 2
    draft_table = bigram + torch.randn(V, V, generator=generator)  # right most of the time
    params = SamplingParams(temperature=0, repetition_penalty=1.5, max_tokens=None)
    prompt = [4]

    def target_logits(tokens: list[int]) -> torch.Tensor:
        return bigram[tokens[-1]]

    plain = SamplerState(params, prompt_token_ids=prompt)
    history = list(prompt)
    for _ in range(30):
        token = sample(target_logits(history)[None], [plain]).token_ids.item()
        plain.append(token)
        history.append(token)

    spec = SamplerState(params, prompt_token_ids=prompt)
    history, accepted_total = list(prompt), 0
    while len(spec.output_token_ids) < 30:
        drafts = []
        for _ in range(3):  # greedy draft of 3 tokens
            drafts.append(int(draft_table[(history + drafts)[-1]].argmax()))
        logits = torch.stack([target_logits(history + drafts[:i]) for i in range(4)])
        processed = process_logits(logits, [spec] * 4, pending=[drafts[:i] for i in range(4)])
        tokens, accepted = speculative_accept_greedy(processed[:3], drafts, processed[3])
        accepted_total += accepted
        for token in tokens:
            spec.append(token)
            history.append(token)
    assert spec.output_token_ids[:30] == plain.output_token_ids
    assert accepted_total > 0


def spec_trials(target, draft, bonus, trials, pass_draft_probs):
    """Draft from ``draft``, verify ``trials`` times; return counts per output position."""
    generator = torch.Generator().manual_seed(11)
    draft_generator = torch.Generator().manual_seed(12)
    k, vocab = target.shape
    counts = torch.zeros(k + 1, vocab)
    for _ in range(trials):
        drafts = torch.multinomial(draft, 1, generator=draft_generator).flatten().tolist()
        tokens, accepted = speculative_accept(target, draft if pass_draft_probs else None,
                                              drafts, bonus, generator)
        assert len(tokens) == accepted + 1 and tokens[:accepted] == drafts[:accepted]
        for position, token in enumerate(tokens):
            counts[position, token] += 1
    return counts


def tv_tolerance(probs: torch.Tensor, draws: float) -> float:
    """Three times the expected total variation of ``draws`` samples from ``probs``."""
    expected = 0.5 * float((probs * (1 - probs)).sqrt().sum()) * math.sqrt(2 / (math.pi * draws))
    return 3 * expected


@pytest.mark.parametrize("pass_draft_probs", [True, False])
def test_speculative_sampling_preserves_the_target_distribution(pass_draft_probs):
    """Emitted tokens follow the target even with a biased draft (``None`` = one-hot ``q``)."""
    target = torch.tensor([[0.30, 0.25, 0.20, 0.15, 0.07, 0.03],
                           [0.05, 0.10, 0.40, 0.25, 0.10, 0.10]])
    draft = torch.tensor([[0.05, 0.05, 0.10, 0.20, 0.30, 0.30],  # biased towards the tail
                          [0.30, 0.10, 0.30, 0.10, 0.10, 0.10]])
    bonus = torch.tensor([0.10, 0.20, 0.30, 0.20, 0.15, 0.05])
    counts = spec_trials(target, draft, bonus, trials=6000, pass_draft_probs=pass_draft_probs)
    for position, probs in enumerate([*target, bonus]):
        draws = float(counts[position].sum())
        assert draws > 50
        assert total_variation(counts[position], probs) < tv_tolerance(probs, draws), position
    assert total_variation(counts[0], draft[0]) > 0.3  # the test can tell them apart


def test_speculative_accept_edge_cases():
    generator = torch.Generator().manual_seed(0)
    onehot = torch.eye(4)
    # the draft equals a one-hot target: always accepted, then the bonus
    tokens, accepted = speculative_accept(onehot[[1, 2]], onehot[[1, 2]], [1, 2], onehot[3],
                                          generator)
    assert (tokens, accepted) == ([1, 2, 3], 2)
    # target gives the draft token probability 0: rejected, residual = target
    tokens, accepted = speculative_accept(onehot[[0]], None, [2], onehot[3], generator)
    assert (tokens, accepted) == ([0], 0)
    # no drafts: just the bonus token
    assert speculative_accept(onehot[:0], None, [], onehot[2], generator) == ([2], 0)
    assert speculative_accept_greedy(onehot[:0], [], onehot[1]) == ([1], 0)
    with pytest.raises(ValueError, match="draft_tokens_K"):
        speculative_accept(onehot[:2], None, [1], onehot[0], generator)
