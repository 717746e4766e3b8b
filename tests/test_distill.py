"""``nanoseek distill``: KD losses against float64 references (tail bucket), top-k trace files
round-trip, teacher-forced scoring equals per-sequence forwards, distillation end to end (a
DeepSeek ``tiny`` teacher with scripted traces → ``tiny-qwen2`` student that opens in
transformers with equal logits and runs in the engine), and the error paths."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nanoseek import cli
from nanoseek.checkpoint import load_pretrained, save_pretrained
from nanoseek.config import get_preset
from nanoseek.data.tasks import chat_messages, get_task, solution_completion
from nanoseek.distill.kd import TAIL_FLOOR, topk_kd_loss
from nanoseek.distill.run import DistillConfig, run_distill
from nanoseek.distill.traces import TeacherTopK, score_sequences, score_traces, topk_path
from nanoseek.eval.run import load_problems
from nanoseek.model import build_model
from nanoseek.tokenizer import train_tokenizer
from nanoseek.train.config import load_config

WRONG = "\nno idea\n</think>\n\n\\boxed{-1}"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    problems = get_task("arithmetic")(60, seed=1, split="train", difficulty=1)
    texts = [chat_messages(p)[0]["content"] + "\n" + p.solution for p in problems]
    (root / "c.txt").write_text("\n\n".join(texts))
    return train_tokenizer([root / "c.txt"], vocab_size=320)


@pytest.fixture(scope="module")
def teacher_dir(tokenizer, tmp_path_factory):
    """A DeepSeek ``tiny`` (MoE, MLA, MTP) teacher with random weights and the tokenizer."""
    torch.manual_seed(0)
    config = get_preset("tiny").replace(vocab_size=tokenizer.vocab_size,
                                        bos_token_id=tokenizer.bos_id,
                                        eos_token_id=tokenizer.eos_id)
    path = tmp_path_factory.mktemp("teacher")
    save_pretrained(build_model(config), path)
    tokenizer.save_pretrained(path)
    return path


class Scripted:
    """An ``LLM``-shaped teacher: every sample of problem p is its worked solution, except
    problems whose index is in ``wrong`` (always wrong)."""

    def __init__(self, tokenizer, problems, wrong=()):
        self.tokenizer, self.problems, self.wrong = tokenizer, problems, set(wrong)

    def generate(self, prompts, params):
        out = []
        for ids, sp in zip(prompts, params, strict=True):
            text = self.tokenizer.decode(ids)
            i = next(i for i, p in enumerate(self.problems) if p.prompt in text)
            good = solution_completion(self.problems[i], think_prefilled=True)
            t = WRONG if i in self.wrong else good
            out.append(SimpleNamespace(outputs=[
                SimpleNamespace(text=t, token_ids=[1] * len(t), finish_reason="stop")
                for _ in range(sp.n)]))
        return out


def distill_args(teacher, out, *extra):
    return ["--teacher.path", str(teacher), "--problems.num_problems", "8",
            "--problems.difficulty", "1", "--traces.samples", "2", "--traces.reward_workers",
            "0", "--train.out_dir", str(out), "--train.seq_len", "128", "--train.micro_batch",
            "4", "--train.steps", "8", "--train.precision", "fp32", "--train.peak_tflops", "1",
            "--train.progress", "false", "--optim.lr", "3e-3", "--optim.warmup_steps", "1",
            *extra]


# ---------------------------------------------------------------------------------- KD losses
def _reference(p_V, q_V, ids, kind, beta=0.5):
    """float64 numpy: the (K+1)-bucket divergence with the floored teacher tail."""
    p = np.append(p_V[ids], max(1.0 - p_V[ids].sum(), TAIL_FLOOR))
    q = np.append(q_V[ids], 1.0 - q_V[ids].sum())

    def kl(a, b):
        return float(np.sum(np.where(a > 0, a * (np.log(a) - np.log(b)), 0.0)))

    if kind == "forward_kl":
        return kl(p, q)
    if kind == "reverse_kl":
        return kl(q, p)
    m = beta * p + (1 - beta) * q
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def _case(n=6, v=40, k=5, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    t_logits = torch.randn(n, v, generator=g, dtype=torch.float64) * scale
    s_logits = torch.randn(n, v, generator=g, dtype=torch.float64) * scale
    lp_V = t_logits.log_softmax(-1)
    lp_K, ids = lp_V.topk(k, dim=-1)
    return s_logits, ids, lp_K, lp_V


@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5),
                                       ("jsd", 0.1), ("jsd", 0.9)])
def test_kd_losses_match_float64_references(kind, beta):
    s_logits, ids, lp_K, lp_V = _case()
    ours = topk_kd_loss(s_logits.float(), ids, lp_K.float(), kind, beta)
    assert ours.dtype == torch.float32
    p_V, q_V = lp_V.exp().numpy(), s_logits.softmax(-1).numpy()
    ref = [_reference(p_V[i], q_V[i], ids[i].numpy(), kind, beta) for i in range(len(ids))]
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-6)
    assert (ours >= 0).all()


def test_kd_tail_bucket_properties():
    s_logits, ids, lp_K, lp_V = _case(v=30, k=30)  # top-k = whole vocab: no tail, exact KL
    p, q = lp_V.exp(), s_logits.softmax(-1)
    full_fwd = (p * (lp_V - s_logits.log_softmax(-1))).sum(-1)
    full_rev = (q * (s_logits.log_softmax(-1) - lp_V)).sum(-1)
    torch.testing.assert_close(topk_kd_loss(s_logits, ids, lp_K, "forward_kl"), full_fwd)
    torch.testing.assert_close(topk_kd_loss(s_logits, ids, lp_K, "reverse_kl"), full_rev)
    s_logits, ids, lp_K, lp_V = _case(v=30, k=4)  # coarse-graining: a lower bound
    full_fwd = (lp_V.exp() * (lp_V - s_logits.log_softmax(-1))).sum(-1)
    assert (topk_kd_loss(s_logits, ids, lp_K, "forward_kl") <= full_fwd + 1e-12).all()
    # β = 0 / 1 are forward / reverse KL; JSD is bounded by log 2; equal inputs give 0
    for beta, kind in ((0.0, "forward_kl"), (1.0, "reverse_kl")):
        torch.testing.assert_close(topk_kd_loss(s_logits, ids, lp_K, "jsd", beta),
                                   topk_kd_loss(s_logits, ids, lp_K, kind))
    assert (topk_kd_loss(s_logits, ids, lp_K, "jsd", 0.5) <= math.log(2)).all()
    same = torch.log_softmax(s_logits, -1).gather(1, ids)
    assert topk_kd_loss(s_logits, ids, same, "jsd").abs().max() < 1e-12


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_kd_gradients(kind):
    s_logits, ids, lp_K, _ = _case(n=3, v=12, k=4)
    s_logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: topk_kd_loss(x, ids, lp_K, kind), (s_logits,))
    # a teacher top-k that holds all its mass (rounding) and a whole-vocab top-k: finite grads
    peaked = torch.full((3, 4), -40.0, dtype=torch.float64)
    peaked[:, 0] = 0.0
    for t_ids, t_lp in ((ids, peaked), (torch.arange(12).expand(3, 12), torch.full(
            (3, 12), -math.log(12), dtype=torch.float64))):
        loss = topk_kd_loss(s_logits, t_ids, t_lp, kind).sum()
        (grad,) = torch.autograd.grad(loss, s_logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


# ---------------------------------------------------------------------------------- traces
def test_topk_file_round_trip_and_reuse(tokenizer, teacher_dir, tmp_path):
    rng = np.random.default_rng(0)
    entries = {bytes([i] * 8): (rng.integers(0, 50, n).astype(np.int32),
                                rng.integers(0, 300, (n, 3)).astype(np.int32),
                                rng.normal(size=(n, 3)).astype(np.float32))
               for i, n in enumerate([4, 0, 7])}
    TeacherTopK(3, "fp", "t", entries).save(tmp_path / "a.safetensors")
    back = TeacherTopK.load(tmp_path / "a.safetensors")
    assert (back.k, back.tokenizer, back.teacher) == (3, "fp", "t")
    for key, arrays in entries.items():
        for a, b in zip(arrays, back.lookup(key), strict=True):
            np.testing.assert_array_equal(a, b)
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a readable top-k file"):
        TeacherTopK.load(tmp_path / "bad.safetensors")
    # scoring writes the file once; a second call reuses every sequence
    teacher = load_pretrained(teacher_dir)
    records = [{"messages": [{"role": "user", "content": p.prompt},
                             {"role": "assistant", "content": p.solution}]}
               for p in get_task("arithmetic")(3, seed=4, split="train", difficulty=1)]
    first = score_traces(teacher, tokenizer, records, tmp_path / "t.safetensors", k=5)
    mtime = (tmp_path / "t.safetensors").stat().st_mtime_ns
    again = score_traces(teacher, tokenizer, records, tmp_path / "t.safetensors", k=5)
    assert (tmp_path / "t.safetensors").stat().st_mtime_ns == mtime
    assert first.entries.keys() == again.entries.keys() and len(first.entries) == 3


def test_scoring_equals_a_forward_per_sequence(tokenizer, teacher_dir):
    teacher = load_pretrained(teacher_dir)
    rng = np.random.default_rng(1)
    seqs = [(rng.integers(5, 300, n), rng.random(n) < 0.5) for n in (9, 4, 15)]
    scored = score_sequences(teacher, seqs, k=6, vocab_size=tokenizer.vocab_size,
                             batch_tokens=32)  # forces several padded batches
    with torch.no_grad():
        for (ids, mask), (pos, top, lp) in zip(seqs, scored, strict=True):
            logits = teacher(torch.from_numpy(ids)[None]).logits[0].log_softmax(-1)
            want = np.flatnonzero(mask)
            want = want[want > 0]
            np.testing.assert_array_equal(pos, want)
            values, index = logits[torch.from_numpy(want - 1)].topk(6, dim=-1)
            np.testing.assert_array_equal(top, index.numpy())
            np.testing.assert_allclose(lp, values.numpy(), atol=2e-5)


# ---------------------------------------------------------------------------------- end to end
def test_distill_end_to_end(tokenizer, teacher_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    problems = load_problems("arithmetic", 8, 0, "train", 1)
    out = tmp_path / "run"
    cfg = load_config(DistillConfig, None, distill_args(
        teacher_dir, out, "--kd.weight", "0.5", "--kd.top_k", "8", "--kd.loss", "jsd",
        "--onpolicy.steps", "2", "--onpolicy.prompts", "2", "--onpolicy.max_tokens", "8"))
    result = run_distill(cfg, generator=Scripted(tokenizer, problems, wrong=[0]))
    traces = result.summary["traces"]
    assert (traces["prompts"], traces["samples"], traces["verified"]) == (8, 16, 14)
    assert traces["kept"] == 7 and traces["duplicates"] == 7  # 2 equal samples → 1 kept
    assert result.summary["topk"] == {"k": 8, "sequences": 7}
    assert result.summary["student_active_params"] < result.summary["teacher_active_params"]
    sft_metrics = [json.loads(line) for line in (out / "sft" / "metrics.jsonl").open()]
    assert sft_metrics[-1]["loss"] < sft_metrics[0]["loss"] and "kd_loss" in sft_metrics[0]
    on_metrics = [json.loads(line) for line in (out / "onpolicy" / "metrics.jsonl").open()]
    assert len(on_metrics) == 2 and all(math.isfinite(r["kd_loss"]) for r in on_metrics)
    assert json.loads((out / "distill.json").read_text())["student_dir"] == str(out / "student")
    # a plain HF Qwen2 dir: transformers gives our logits; our engine runs it
    student = out / "student"
    hf = transformers.AutoModelForCausalLM.from_pretrained(student).eval()
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    ours = load_pretrained(student).eval()
    ids = torch.tensor([tokenizer.render_chat(chat_messages(problems[1]),
                                              add_generation_prompt=True).ids])
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids).logits).abs().max() <= 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(student)
    assert hf_tok.apply_chat_template(chat_messages(problems[1]), add_generation_prompt=True,
                                      tokenize=False) == tokenizer.decode(ids[0].tolist())
    from nanoseek.infer import LLM, SamplingParams

    reply = LLM(student).chat(chat_messages(problems[1]),
                              SamplingParams(temperature=0, max_tokens=5))[0]
    assert len(reply.outputs[0].token_ids) >= 1
    # rerunning with --resume skips every finished stage
    again = run_distill(cfg, resume=True, generator=Scripted(tokenizer, problems))
    assert again.summary["traces"]["resumed"] == 8 and "sft" not in again.summary
    with pytest.raises(ValueError, match="already holds a distillation run"):
        run_distill(cfg, generator=Scripted(tokenizer, problems))


def test_sequence_level_distill_with_a_llama_student(tokenizer, teacher_dir, tmp_path):
    problems = load_problems("arithmetic", 8, 0, "train", 1)
    out = tmp_path / "run"
    cfg = load_config(DistillConfig, None, distill_args(
        teacher_dir, out, "--student.model_type", "llama", "--traces.keep", "shortest",
        "--student.overrides", "{hidden_size = 32, num_hidden_layers = 1}"))
    result = run_distill(cfg, generator=Scripted(tokenizer, problems))
    config = json.loads((result.student_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["hidden_size"] == 32
    assert not topk_path(out / "traces.jsonl").exists()
    assert result.summary["traces"]["kept"] == 8


# ---------------------------------------------------------------------------------- errors
def test_teacher_that_solves_nothing_stops_with_numbers(teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["distill", *distill_args(teacher_dir, out, "--problems.num_problems", "3",
                                              "--traces.max_tokens", "4")])
    err = capsys.readouterr().err
    assert code == 2 and "the teacher solved nothing: 0 of 6 samples on 3 prompts" in err
    assert not (out / "traces.jsonl").exists() and not (out / "sft").exists()
    assert not (out / "student").exists()
    assert json.loads((out / "traces.stats.json").read_text())["samples"] == 6


def test_bad_students_and_tokenizers_are_rejected_before_any_work(tokenizer, teacher_dir,
                                                                   tmp_path):
    def check(message, *extra):
        out = tmp_path / f"o{abs(hash(message))}"
        cfg = load_config(DistillConfig, None, distill_args(teacher_dir, out, *extra))
        with pytest.raises(ValueError, match=message):
            run_distill(cfg, generator=Scripted(tokenizer, []))
        assert not out.exists()

    check("model_type 'deepseek_v3' is not a supported student architecture",
          "--student.preset", "tiny")
    check("student.model_type: 'mixtral' is not a supported", "--student.model_type", "mixtral")
    check(r"student.path .*deepseek_v3", "--student.path", str(teacher_dir))
    (tmp_path / "c.txt").write_text("a different corpus " * 50)
    other = train_tokenizer([tmp_path / "c.txt"], vocab_size=300)
    student = tmp_path / "student"
    save_pretrained(build_model(get_preset("tiny-qwen2").replace(vocab_size=300)), student)
    other.save_pretrained(student)
    check(rf"share a tokenizer, but the teacher's \(vocab 320.*student's \(vocab "
          rf"{other.vocab_size},",
          "--student.path", str(student), "--kd.weight", "0.5")
    check("kd.beta: 2.0 must be in", "--kd.loss", "jsd", "--kd.beta", "2.0")
    check("teacher.path: .* is not a model directory", "--teacher.path", str(tmp_path / "x"))
    check("task='nope' is neither a built-in task", "--problems.task", "nope")


def test_sft_with_kd_checks_the_topk_file(tokenizer, teacher_dir, tmp_path):
    from nanoseek.train.sft import SFTConfig, run_sft

    problems = get_task("arithmetic")(3, seed=4, split="train", difficulty=1)
    records = [{"messages": [{"role": "user", "content": p.prompt},
                             {"role": "assistant", "content": p.solution}]} for p in problems]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    teacher = load_pretrained(teacher_dir)
    score_traces(teacher, tokenizer, records[:2], tmp_path / "k.safetensors", k=4)
    cfg = load_config(SFTConfig, None, [
        "--model.preset", "tiny-qwen2", "--data.train", str(data), "--data.tokenizer",
        str(teacher_dir), "--data.topk", str(tmp_path / "k.safetensors"), "--sft.kd_weight",
        "0.5", "--train.out_dir", str(tmp_path / "o"), "--train.steps", "1",
        "--train.seq_len", "128", "--train.progress", "false"])
    with pytest.raises(ValueError, match="1 of 3 conversations have no teacher log-probs"):
        run_sft(cfg)
    TeacherTopK(4, "another", "t", {}).save(tmp_path / "k.safetensors")
    with pytest.raises(ValueError, match="scored with another tokenizer"):
        run_sft(cfg)
    assert not (tmp_path / "o" / "model").exists()
