"""``bench/step_floor.py``: it records a step's matrix multiplies (each once, with its shape)
and replays them, and the whole script runs on the tiny preset against transformers."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
import step_floor

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp_step() -> tuple[nn.Module, Callable[[], float]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8, bias=False))
    x = torch.randn(4, 16)

    def step() -> float:
        loss = model(x).square().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss.detach())
    return model, step


def test_records_each_matmul_of_a_step_once_with_its_shapes():
    _, step = _mlp_step()
    calls = step_floor.record_calls(step)
    # forward: addmm (biased layer) and mm; backward: one weight grad each, one input grad
    # (the first layer's input needs none)
    assert calls == {  # (sizes, strides) of each tensor operand: W.T is a transposed view
        ("aten::addmm", (((32,), (1,)), ((4, 16), (16, 1)), ((16, 32), (1, 16)))): 1,
        ("aten::mm", (((4, 32), (32, 1)), ((32, 8), (1, 32)))): 1,
        ("aten::mm", (((8, 4), (1, 8)), ((4, 32), (32, 1)))): 1,
        ("aten::mm", (((4, 8), (8, 1)), ((8, 32), (32, 1)))): 1,
        ("aten::mm", (((32, 4), (1, 32)), ((4, 16), (16, 1)))): 1,
    }


def test_floor_counts_every_call_and_replays_attention_with_its_backward():
    q = torch.randn(1, 2, 8, 4)
    q = (tuple(q.shape), q.stride())
    calls = {("aten::mm", (((4, 8), (8, 1)), ((8, 16), (1, 8)))): 3,
             (step_floor.ATTENTION, (q, q, q)): 2}
    floor = step_floor.floor_seconds(calls, rounds=1)
    assert floor["gemm_calls"] == 3 and floor["attention_calls"] == 2
    assert floor["gemm"] > 0 and floor["attention"] > 0


def _layout(t: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(t.shape), t.stride()


def test_replayed_out_variant_writes_into_the_given_buffer():
    fn = step_floor._gemm("aten::mm", (((3, 5), (5, 1)), ((5, 2), (1, 5)), ((3, 2), (2, 1))))
    assert fn().shape == (3, 2)
    out = _layout(torch.empty(3, 2))
    fn = step_floor._gemm("aten::addmm", (_layout(torch.zeros(2)), _layout(torch.ones(3, 5)),
                                          _layout(torch.ones(5, 2)), out))
    assert fn().shape == (3, 2)
    with pytest.raises(ValueError, match="not a matmul"):
        step_floor._gemm("aten::add", (((3,), (1,)),))


def test_replayed_operands_keep_the_steps_layout():
    expanded = step_floor._operand((4, 3), (0, 1))  # a broadcast row, as ``.sum()``'s grad
    assert expanded.stride() == (0, 1) and torch.equal(expanded[0], expanded[3])
    transposed = step_floor._operand((5, 2), (1, 5))
    assert transposed.stride() == (1, 5) and not transposed.is_contiguous()


@pytest.mark.slow
def test_script_runs_both_sides_on_the_tiny_preset(capsys):
    pytest.importorskip("transformers")
    assert step_floor.main(["--preset", "tiny", "--batch", "1", "--seq", "32", "--repeats",
                            "1", "--warmup", "1", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "ceiling" in out and "transformers" in out


def test_perf_report_lines_are_summed_by_kind_of_work():
    report = """# Samples: 11K of event 'cpu-clock'
#
    34.64%  [.] mkl_blas_avx512_sgemm_kernel_0_b0
     3.85%  [.] mkl_blas_avx512_sgemm_scopy_right8_ea
     7.09%  [.] c10::function_ref<...>::callback_fn<at::native::AVX2::VectorizedLoop2d<mul>>
     3.42%  [.] at::internal::invoke_parallel<at::native::adam_fused_step_impl<float>>
     2.68%  [.] 0x000000000001de62
     0.63%  [.] at::native::cpu_flash_attention<float, float, 64l, 512l, false>
     0.40%  [.] at::native::AVX512::serial_vec_log_softmax_lastdim_range<float>
     0.24%  [.] _int_malloc
     0.10%  [.] PyEval_EvalFrameDefault
     5.67%  [.] kernel._omp_fn.0
     1.00%  [.] kernel
"""
    shares = step_floor.parse_perf_report(report)
    assert shares == pytest.approx({
        "matmul (MKL/oneDNN GEMM)": 38.49, "element-wise": 7.09,
        "optimizer (fused AdamW)": 3.42, "unresolved (OpenMP runtime, ...)": 2.68,
        "attention kernels": 0.63, "softmax": 0.40, "memory copies and allocation": 0.24,
        "other": 0.10, "compiled kernels (inductor)": 6.67})
    assert next(iter(shares)) == "matmul (MKL/oneDNN GEMM)"  # largest first
