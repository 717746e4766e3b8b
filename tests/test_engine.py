"""Inference engine: paged caches, continuous batching, prefix cache, preemption, MTP
speculative decoding, streaming and errors — each fast path held equal to a plain reference
(no-cache full recompute) and to ``transformers``' ``generate``."""

from __future__ import annotations

import copy
import threading
import time

import pytest
import torch
from torch import nn

from nanoseek.checkpoint import load_pretrained
from nanoseek.config import get_preset
from nanoseek.infer import LLM, LLMEngine, SamplingParams
from nanoseek.infer.cache import BlockManager
from nanoseek.infer.runner import reference_generate
from nanoseek.infer.sampling import process_logits
from nanoseek.infer.scheduler import Sequence
from nanoseek.model import build_model
from nanoseek.tokenizer import train_tokenizer

transformers = pytest.importorskip("transformers")

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
SMALL = dict(vocab_size=97, hidden_size=32, num_attention_heads=4, max_position_embeddings=256)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: OpenMP threads only add overhead (and stall on a busy box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _hf_models():
    mla = dict(q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4,
               v_head_dim=8, n_routed_experts=8, num_experts_per_tok=2, n_group=4,
               topk_group=2, moe_intermediate_size=16, intermediate_size=64,
               first_k_dense_replace=1, num_hidden_layers=2, num_key_value_heads=4,
               rope_scaling=dict(YARN))
    return {
        "llama": transformers.LlamaForCausalLM(transformers.LlamaConfig(
            **SMALL, intermediate_size=48, num_hidden_layers=2, num_key_value_heads=2,
            tie_word_embeddings=True)),
        "qwen2": transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
            **SMALL, intermediate_size=48, num_hidden_layers=2, num_key_value_heads=2)),
        "deepseek_v3": transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(
            **SMALL, **mla, n_shared_experts=1, routed_scaling_factor=2.5,
            num_nextn_predict_layers=0)),
        "deepseek_v2": transformers.DeepseekV2ForCausalLM(transformers.DeepseekV2Config(
            **SMALL, **{**mla, "q_lora_rank": None}, n_shared_experts=2,
            topk_method="group_limited_greedy")),
    }


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Random transformers models (weights std 0.2 for clear argmax margins), saved by
    transformers itself."""
    out = {}
    torch.manual_seed(0)
    for name, model in _hf_models().items():
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.2)
        path = tmp_path_factory.mktemp(name)
        model.eval().save_pretrained(path)
        out[name] = (model, path)
    return out


def _prompts(vocab: int, lengths=(3, 11, 26), seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def _tiny(seed: int = 0, std: float = 0.15, **changes) -> nn.Module:
    """nanoseek's tiny V3 preset (MLA, MoE, MTP) with larger random weights."""
    torch.manual_seed(seed)
    model = build_model(get_preset("tiny").replace(**changes)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, std)
    return model


def _token_ids(outs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outs]


# ==================================================================== parity
@pytest.mark.parametrize("family", ["llama", "qwen2", "deepseek_v3", "deepseek_v2"])
def test_greedy_equals_reference_and_transformers(hf_dirs, family):
    hf_model, path = hf_dirs[family]
    model = load_pretrained(path)
    prompts = _prompts(97)
    llm = LLM(model, block_size=4, num_blocks=40)
    got = _token_ids(llm.generate(prompts, GREEDY))
    hf_model.generation_config.eos_token_id = None
    for prompt, tokens in zip(prompts, got, strict=True):
        assert tokens == reference_generate(model, prompt, 12)
        with torch.no_grad():
            hf = hf_model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                   pad_token_id=0)
        assert tokens == hf[0, len(prompt):].tolist()


def test_batched_chunked_equals_one_at_a_time():
    model = _tiny()
    prompts = _prompts(512, lengths=(2, 9, 33, 17, 5))
    alone = [_token_ids(LLM(model, block_size=4, num_blocks=64).generate([p], GREEDY))[0]
             for p in prompts]
    chunked = LLM(model, block_size=4, num_blocks=64, max_num_batched_tokens=7)
    assert _token_ids(chunked.generate(prompts, GREEDY)) == alone
    assert alone[2] == reference_generate(model, prompts[2], 12)


def test_prefix_cache_hit_equals_miss():
    model = _tiny()
    shared = _prompts(512, lengths=(21,))[0]
    prompts = [[*shared, 7, 8, 9], [*shared, 1, 2]]
    cold = LLM(model, block_size=4, num_blocks=64, enable_prefix_caching=False)
    warm = LLM(model, block_size=4, num_blocks=64)
    expect = _token_ids(cold.generate(prompts, GREEDY))
    first = warm.generate(prompts[:1], GREEDY)[0]
    second = warm.generate(prompts[1:], GREEDY)[0]
    assert first.num_cached_tokens == 0 and second.num_cached_tokens == 20
    assert [first.outputs[0].token_ids, second.outputs[0].token_ids] == expect
    # the whole first prompt + its output is cached now (blocks registered during decode)
    again = warm.generate([prompts[0] + expect[0]], GREEDY)[0]
    assert again.num_cached_tokens == (len(prompts[0]) + 12 - 1) // 4 * 4


def test_preemption_keeps_outputs_identical():
    model = _tiny()
    prompts = _prompts(512, lengths=(13, 14, 15, 16))
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    expect = [reference_generate(model, p, 24) for p in prompts]
    llm = LLM(model, block_size=4, num_blocks=24)  # 23 usable blocks for 4 x 40 tokens
    assert _token_ids(llm.generate(prompts, params)) == expect
    assert llm.engine.stats()["num_preemptions"] > 0


def test_n_samples_share_prompt_blocks_and_match_seeds():
    model = _tiny()
    prompt = _prompts(512, lengths=(18,))[0]
    params = SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=6, ignore_eos=True)
    llm = LLM(model, block_size=4, num_blocks=64)
    engine = llm.engine
    engine.add_request("r", prompt, params)
    engine.step()  # prefill of sample 0
    engine.step()  # samples 1, 2 join, sharing the 4 full prompt blocks
    tables = [s.block_table for s in engine.requests["r"].seqs]
    assert tables[0][:4] == tables[1][:4] == tables[2][:4]
    assert all(engine.blocks.ref_count[b] == 3 for b in tables[0][:4])
    while engine.has_unfinished():
        outs = engine.step()
    together = [o.token_ids for o in outs[0].outputs]
    alone = [llm.generate([prompt], SamplingParams(temperature=1.0, seed=5 + i, max_tokens=6,
                                                   ignore_eos=True))[0].outputs[0].token_ids
             for i in range(3)]
    assert together == alone


def test_abort_frees_every_block():
    llm = LLM(_tiny(), block_size=4, num_blocks=40)
    engine = llm.engine
    for i, prompt in enumerate(_prompts(512, lengths=(9, 30, 4))):
        engine.add_request(f"r{i}", prompt, SamplingParams(n=2, max_tokens=50, ignore_eos=True))
    for _ in range(4):
        engine.step()
    assert engine.blocks.num_free_blocks < 39
    for i in range(3):
        engine.abort(f"r{i}")
    assert engine.step() == []
    assert not engine.has_unfinished()
    assert engine.blocks.num_free_blocks == 39 and not any(engine.blocks.ref_count)


# ==================================================================== speculative decoding
def _mtp_friendly(std: float = 0.15) -> nn.Module:
    """A tiny V3 whose MTP module predicts what the main model will: the main layers are
    near-identity (small attention, no FFN), so the model is almost a bigram, and the MTP
    module is made the same bigram of its input token."""
    model = _tiny(seed=3, std=std)
    with torch.no_grad():
        n = model.config.num_hidden_layers
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.o_proj.weight.mul_(0.03 if i < n else 0.0)
            for name, p in layer.mlp.named_parameters():
                if "down_proj" in name:
                    p.zero_()
        mtp = model.model.layers[n]
        d = model.config.hidden_size
        mtp.eh_proj.weight.zero_()
        mtp.eh_proj.weight[:, :d] = torch.eye(d)
    return model


def test_speculative_greedy_equals_plain():
    model = _mtp_friendly()
    prompts = _prompts(512, lengths=(3, 19, 40))
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    plain = _token_ids(LLM(model, block_size=4, num_blocks=80).generate(prompts, params))
    spec = LLM(model, block_size=4, num_blocks=80, num_speculative_tokens=1,
               max_num_batched_tokens=16)
    assert _token_ids(spec.generate(prompts, params)) == plain
    assert plain[1] == reference_generate(model, prompts[1], 20)
    assert spec.engine.stats()["spec_acceptance_rate"] > 0.5
    # blocks registered during speculative steps hold the right tokens: a follow-up hits them
    follow = spec.generate([prompts[1] + plain[1]], params)[0]
    assert follow.num_cached_tokens == (len(prompts[1]) + 20 - 1) // 4 * 4
    assert follow.outputs[0].token_ids == reference_generate(model, prompts[1] + plain[1], 20)
    random_mtp = LLM(_tiny(), block_size=4, num_blocks=80, num_speculative_tokens=1)
    expect = [reference_generate(_tiny(), p, 20) for p in prompts]
    assert _token_ids(random_mtp.generate(prompts, params)) == expect


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    stat = float(((counts - expected) ** 2 / expected).sum())
    dof = counts.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2), torch.tensor(stat / 2)))


def test_speculative_sampling_matches_distribution():
    """Second-token distribution (the one that goes through draft + verify) equals the exact
    distribution computed from the model (chi-square goodness of fit)."""
    model = _mtp_friendly(std=0.06)
    prompt, k, n = [5, 17, 101, 3], 3, 1500
    params = SamplingParams(n=n, temperature=1.0, top_k=k, seed=11, max_tokens=2,
                            ignore_eos=True)
    from nanoseek.infer.sampling import SamplerState

    state = SamplerState(params)
    with torch.no_grad():
        p1 = process_logits(model(torch.tensor([prompt])).logits[:, -1], [state]).softmax(-1)[0]
        firsts = p1.topk(k).indices.tolist()
        rows = torch.tensor([[*prompt, t] for t in firsts])
        p2 = process_logits(model(rows).logits[:, -1], [state] * k).softmax(-1)
    outcomes = {(a, b): float(p1[a] * p2[i, b]) for i, a in enumerate(firsts)
                for b in p2[i].topk(k).indices.tolist()}
    for spec in (1, 0):
        llm = LLM(model, block_size=4, num_blocks=1024, num_speculative_tokens=spec)
        out = llm.generate([prompt], params)[0]
        counts = torch.zeros(len(outcomes))
        keys = list(outcomes)
        for o in out.outputs:
            counts[keys.index(tuple(o.token_ids))] += 1
        assert _chi2_pvalue(counts, torch.tensor(list(outcomes.values()))) > 1e-3, spec
        if spec:
            rate = llm.engine.stats()["spec_acceptance_rate"]
            assert 0.3 < rate < 1.0  # both the accept and the reject branch ran


# ==================================================================== API, streaming, errors
def test_step_api_outputs_are_incremental():
    engine = LLMEngine(_tiny(), block_size=4, num_blocks=64)
    engine.add_request("a", [1, 2, 3, 4, 5], SamplingParams(temperature=0, max_tokens=5,
                                                            ignore_eos=True, logprobs=2))
    deltas, final = [], None
    while engine.has_unfinished():
        for out in engine.step():
            deltas += out.outputs[0].delta_token_ids
            final = out
    assert final.finished and final.outputs[0].finish_reason == "length"
    assert deltas == final.outputs[0].token_ids and final.completion_tokens == 5
    assert final.prompt_tokens == 5 and final.num_cached_tokens == 0
    lp, tokens = final.outputs[0].logprobs, final.outputs[0].token_ids
    assert len(lp) == 5
    assert all(t in d and len(d) in (2, 3) for d, t in zip(lp, tokens, strict=True))
    with torch.no_grad():
        ref = engine.model(torch.tensor([[1, 2, 3, 4, 5]])).logits[0, -1].log_softmax(-1)
    assert lp[0][tokens[0]] == pytest.approx(float(ref[tokens[0]]), abs=1e-4)
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("b", [1], None)
        engine.add_request("b", [1], None)


def test_context_limit_errors_and_clipping():
    llm = LLM(_tiny(), block_size=4, num_blocks=64, max_model_len=32)
    with pytest.raises(ValueError, match=r"40 tokens .* max_model_len is 32"):
        llm.generate([[1] * 40], GREEDY)
    out = llm.generate([[1] * 28], SamplingParams(temperature=0, max_tokens=None,
                                                  ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 4 and out.outputs[0].finish_reason == "length"
    with pytest.raises(ValueError, match="max_position_embeddings"):
        LLM(_tiny(), max_model_len=10**6)
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        LLM(build_model(get_preset("tiny-llama")), num_speculative_tokens=1)


def test_kv_cache_holds_only_the_latent():
    model = _tiny()
    cfg = model.config
    engine = LLMEngine(model, block_size=4, num_blocks=10)
    per_layer = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    assert engine.storage.bytes_per_token == cfg.num_hidden_layers * per_layer * 4
    spec = LLMEngine(model, block_size=4, num_blocks=10, num_speculative_tokens=1)
    assert spec.storage.bytes_per_token == (cfg.num_hidden_layers + 1) * per_layer * 4


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_bfloat16_engine_tracks_float32(preset):
    """bf16 engine tokens are near-argmax of the float32 model's no-cache logits (bf16
    rounding moves logits a little, differently in the absorbed decode path and in a bf16
    reference, so exact token equality would test rounding, not the engine)."""
    if preset == "tiny":  # MLA in every layer; dense FFNs (no routing near-ties to flip)
        model = _tiny(first_k_dense_replace=3)
    else:
        model = build_model(get_preset(preset)).eval()
    prompts = _prompts(512, lengths=(6, 20))
    llm = LLM(copy.deepcopy(model), dtype="bfloat16", block_size=4, num_blocks=64)
    assert llm.engine.storage.tensors[0].dtype == torch.bfloat16
    got = _token_ids(llm.generate(prompts, GREEDY))
    for prompt, tokens in zip(prompts, got, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]
        chosen = logits.gather(1, torch.tensor(tokens)[:, None])[:, 0]
        gap = logits.amax(-1) - chosen
        assert float(gap.max()) <= 0.3 * float(logits.std()), gap


class ScriptedModel(nn.Module):
    """A stand-in dense model that 'generates' a fixed script (hidden = one-hot logits)."""

    def __init__(self, vocab: int, script: list[int], prompt_len: int) -> None:
        super().__init__()
        self.config = get_preset("tiny-llama").replace(vocab_size=vocab)
        self.lm_head = nn.Linear(1, vocab, bias=False)
        self.script, self.prompt_len = script, prompt_len

    def forward_hidden(self, input_ids, position_ids, attn_mask, cache=None, attn_impl=""):
        step = (position_ids + 1 - self.prompt_len).clamp(0, len(self.script) - 1)
        return nn.functional.one_hot(torch.tensor(self.script)[step], self.config.vocab_size)

    def logits_from_hidden(self, h):
        return h.float() * 30


def test_streaming_emoji_and_cjk_split_across_tokens(tmp_path):
    (tmp_path / "c.txt").write_text("hello world, this is plain ascii text.\n\n" * 20)
    tok = train_tokenizer([tmp_path], vocab_size=300)
    text = "hi 🙂 中文字 ok"
    script = tok.encode(text)
    assert len(script) > len(text.split())  # the emoji / CJK are split into byte tokens
    engine = LLMEngine(ScriptedModel(tok.vocab_size, [*script, tok.eos_id], 2), tok,
                       block_size=4, num_blocks=16)
    engine.add_request("s", [1, 2], SamplingParams(temperature=0, max_tokens=64))
    deltas = []
    while engine.has_unfinished():
        for out in engine.step():
            deltas.append(out.outputs[0].delta_text)
    assert "".join(deltas) == out.outputs[0].text == text
    assert not any("\ufffd" in d for d in deltas) and len([d for d in deltas if d]) > 3
    assert out.outputs[0].finish_reason == "stop"
    stop = LLMEngine(ScriptedModel(tok.vocab_size, script, 2), tok, block_size=4, num_blocks=16)
    stop.add_request("t", [1, 2], SamplingParams(temperature=0, max_tokens=64, stop=["中文"]))
    while stop.has_unfinished():
        outs = stop.step()
    out = outs[0]
    assert out.outputs[0].text == "hi 🙂 " and out.outputs[0].stop_reason == "中文"


def test_chat_applies_template(tmp_path):
    (tmp_path / "c.txt").write_text("hello world, this is plain ascii text.\n\n" * 20)
    tok = train_tokenizer([tmp_path], vocab_size=300)
    llm = LLM(_tiny(), tokenizer=tok, block_size=4, num_blocks=64)
    messages = [{"role": "user", "content": "hello"}]
    out = llm.chat(messages, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))[0]
    assert out.prompt_token_ids == tok.render_chat(messages, add_generation_prompt=True).ids
    assert out.outputs[0].text == tok.decode(out.outputs[0].token_ids, skip_special_tokens=True)
    text = llm.generate("hello world", SamplingParams(temperature=0, max_tokens=3))[0]
    assert text.prompt == "hello world" and text.prompt_token_ids == tok.encode("hello world")


def test_background_thread_drives_the_engine():
    """add_request / abort from one thread while another runs step() (the server pattern)."""
    engine = LLMEngine(_tiny(), block_size=4, num_blocks=64)
    finished, stop = {}, threading.Event()

    def loop():
        while not stop.is_set():
            for out in engine.step():
                if out.finished:
                    finished[out.request_id] = out
            time.sleep(0.001)

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        for i in range(4):
            engine.add_request(f"r{i}", [1 + i, 2, 3], SamplingParams(temperature=0, max_tokens=8,
                                                                      ignore_eos=True))
        engine.add_request("gone", [5, 6], SamplingParams(max_tokens=500, ignore_eos=True))
        engine.abort("gone")
        deadline = time.time() + 30
        while len(finished) < 4 and time.time() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        worker.join()
    assert sorted(finished) == ["r0", "r1", "r2", "r3"] and not engine.has_unfinished()
    assert engine.blocks.num_free_blocks == 63


def test_block_manager_refcounts_and_lru_eviction():
    bm = BlockManager(num_blocks=7, block_size=2)  # 6 usable blocks

    def seq(i, tokens):
        s = Sequence(i, str(i), 0, list(tokens), len(tokens), 8)
        s.num_computed_tokens = bm.match_prefix(s)
        assert bm.allocate(s, len(tokens))
        s.num_computed_tokens = len(tokens)
        bm.register(s)
        return s

    a = seq(0, [1, 2, 3, 4, 5])  # 2 full blocks cached + 1 partial
    b = seq(1, [1, 2, 3, 4, 6])  # shares a's 2 full blocks
    head, tail = a.block_table[:2]
    assert b.block_table[:2] == [head, tail] and bm.ref_count[head] == 2
    assert b.num_computed_tokens == 5 and bm.num_free_blocks == 2
    bm.free_seq(a)
    bm.free_seq(b)
    assert bm.num_free_blocks == 6 and not any(bm.ref_count)
    c = seq(2, [9, 9, 8, 8, 7])  # takes never-cached blocks before evicting cached ones
    assert not {head, tail} & set(c.block_table)
    again = Sequence(3, "3", 0, [1, 2, 3, 4, 0], 5, 8)
    assert bm.match_prefix(again) == 4  # still cached
    bm.free_seq(again)
    d = seq(4, [5, 5, 6, 6])  # 2 blocks: the last never-cached one, then evicts the LRU
    assert tail in d.block_table and head not in d.block_table  # tail blocks go first
    probe = Sequence(5, "5", 0, [1, 2, 3, 4, 0], 5, 8)
    assert bm.match_prefix(probe) == 2 and probe.block_table == [head]


def test_cache_hits_are_counted_at_the_admission_that_holds():
    """A first try that matched a cached prefix but found no free blocks must not fix the
    request's cache hits: by the time it gets in, that prefix may have been evicted."""
    from nanoseek.infer.scheduler import Scheduler

    class Blocks:  # the prefix is cached at the first try, evicted by the second
        def __init__(self) -> None:
            self.matches, self.fits = [8, 0], [False, True]

        def match_prefix(self, seq: Sequence) -> int:
            return self.matches.pop(0)

        def allocate(self, seq: Sequence, num_tokens: int) -> bool:
            return self.fits.pop(0)

        def free_seq(self, seq: Sequence) -> None:
            pass

    scheduler = Scheduler(Blocks(), max_num_seqs=4, max_num_batched_tokens=64)
    seq = Sequence(0, "r", 0, list(range(12)), 12, 4)
    assert not scheduler._admit(seq, 64) and seq.num_cached_tokens is None
    assert scheduler._admit(seq, 64) and seq.num_cached_tokens == 0


def test_a_chunked_prefill_out_of_blocks_does_not_livelock():
    """Without a prefix cache, a chunk that preempted itself was admitted again in the same
    step, from token 0: every step was that prefill, and the decode holding the blocks never
    ran (65 preemptions in 200 steps, nothing finished)."""
    engine = LLMEngine(_tiny(), block_size=2, num_blocks=8, max_num_batched_tokens=3,
                       enable_prefix_caching=False)
    greedy = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    engine.add_request("A", [11, 12], greedy)
    engine.add_request("B", list(range(20, 31)), greedy)  # needs 6+ of the 7 usable blocks
    outputs = {}
    for _ in range(100):
        if not engine.has_unfinished():
            break
        outputs.update({o.request_id: o for o in engine.step() if o.finished})
    assert not engine.has_unfinished()
    got = outputs["B"].outputs[0].token_ids  # 3: the 14 slots of 7 blocks clip the 4th
    assert got == reference_generate(engine.model, list(range(20, 31)), len(got))
    assert len(got) == 3 and len(outputs["A"].outputs[0].token_ids) == 4


def test_top_k_above_the_vocabulary_keeps_every_token():
    llm = LLM(_tiny(), block_size=4, num_blocks=32)
    params = SamplingParams(top_k=10_000, top_p=0.9, max_tokens=3, seed=1)
    same = SamplingParams(top_p=0.9, max_tokens=3, seed=1)
    assert _token_ids(llm.generate([[1, 2, 3]], params)) == _token_ids(
        llm.generate([[1, 2, 3]], same))


def test_a_failed_generate_leaves_the_engine_usable(monkeypatch):
    """A step that raises mid-way (a bug, out of memory) left its request half-computed in
    the engine, and every later generate failed on it."""
    import nanoseek.infer.sampling as sampling

    llm = LLM(_tiny(), block_size=4, num_blocks=32)
    real, calls = sampling.process_logits, []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated fault")
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "process_logits", fails_once)
    with pytest.raises(RuntimeError, match="simulated fault"):
        llm.generate([[1, 2, 3]], SamplingParams(max_tokens=5, seed=0))
    expect = reference_generate(llm.engine.model, [4, 5, 6], 5)
    greedy = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    assert _token_ids(llm.generate([[4, 5, 6]], greedy)) == [expect]
    assert not llm.engine.has_unfinished()
