"""DeepSeekMoE: a router over fine-grained routed experts plus always-on shared experts.

Router (DeepSeek-V3): s = sigmoid(u · e_i); selection on s + b (``e_score_correction_bias``,
moved by the trainer for auxiliary-loss-free balancing); group score = sum of the top-2
biased scores in each of ``n_group`` groups, keep ``topk_group`` groups (others −inf), then
top-K; gate weights from the raw s, normalized over the selected (``norm_topk_prob``), times
``routed_scaling_factor``. DeepSeek-V2 uses softmax scores with ``greedy`` or
``group_limited_greedy`` (group max) selection.

Experts run **grouped**: the T·K (token, expert) pairs are sorted by expert and each
projection is one grouped matmul over the sorted rows. ``moe_reference`` is the plain loop
kept beside it; a test holds the two equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.grouped_mm import grouped_mm_op
from nanoseek.model.layers import SwiGLU
from nanoseek.model.outputs import RouterStats


class Router(nn.Module):
    """``mlp.gate``: weight ``[E, D]`` and, for ``noaux_tc`` routing, the balance bias buffer
    ``e_score_correction_bias [E]`` (both fp32; V2-style routers have no bias)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        e = config.n_routed_experts
        self.weight = nn.Parameter(torch.empty(e, config.hidden_size, dtype=torch.float32))
        bias = torch.zeros(e, dtype=torch.float32) if config.topk_method == "noaux_tc" else None
        self.register_buffer("e_score_correction_bias", bias)

    def forward(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gate weights ``w_TK`` (fp32), expert ids ``idx_TK``, scores ``s_TE`` (fp32)."""
        cfg = self.config
        logits_TE = F.linear(x_TD.float(), self.weight.float())
        if cfg.scoring_func == "sigmoid":
            scores_TE = logits_TE.sigmoid()
        else:
            scores_TE = logits_TE.softmax(dim=-1)
        if cfg.topk_method == "noaux_tc":
            choice_TE = scores_TE + self.e_score_correction_bias.float()
            choice_TE = _limit_groups(choice_TE, cfg.n_group, cfg.topk_group, top2=True)
        elif cfg.topk_method == "group_limited_greedy":
            choice_TE = _limit_groups(scores_TE, cfg.n_group, cfg.topk_group, top2=False)
        else:
            choice_TE = scores_TE
        idx_TK = torch.topk(choice_TE, k=cfg.num_experts_per_tok, dim=-1, sorted=False)[1]
        w_TK = scores_TE.gather(1, idx_TK)
        if cfg.norm_topk_prob:
            w_TK = w_TK / (w_TK.sum(dim=-1, keepdim=True) + 1e-20)
        return w_TK * cfg.routed_scaling_factor, idx_TK, scores_TE


def _limit_groups(scores_TE: torch.Tensor, n_group: int, topk_group: int, top2: bool):
    """Mask (−inf) every expert outside the ``topk_group`` best of ``n_group`` groups."""
    if n_group <= 1 or topk_group >= n_group:
        return scores_TE
    t, e = scores_TE.shape
    grouped_TGe = scores_TE.view(t, n_group, e // n_group)
    if top2:  # V3: sum of the two best experts in the group
        group_TG = grouped_TGe.topk(2, dim=-1)[0].sum(dim=-1)
    else:  # V2: the best expert in the group
        group_TG = grouped_TGe.amax(dim=-1)
    keep_TG = torch.zeros_like(group_TG, dtype=torch.bool)
    keep_TG.scatter_(1, torch.topk(group_TG, k=topk_group, dim=-1, sorted=False)[1], True)
    keep_TE = keep_TG.unsqueeze(-1).expand(t, n_group, e // n_group).reshape(t, e)
    return scores_TE.masked_fill(~keep_TE, float("-inf"))


class Experts(nn.Module):
    """Routed experts stored stacked: ``gate_proj, up_proj [E, I, D]``, ``down_proj [E, D, I]``.

    On disk (HF) they are per-expert ``experts.{e}.{gate,up,down}_proj.weight``; the checkpoint
    code splits/merges them.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        e, d, i = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        self.gate_proj = nn.Parameter(torch.empty(e, i, d))
        self.up_proj = nn.Parameter(torch.empty(e, i, d))
        self.down_proj = nn.Parameter(torch.empty(e, d, i))

    def forward(self, x_TD: torch.Tensor, w_TK: torch.Tensor, idx_TK: torch.Tensor) -> torch.Tensor:
        """Grouped compute: sort the T·K (token, expert) rows by expert, one grouped matmul per
        projection, scatter-add the weighted rows back. Returns ``[T, D]``."""
        k = idx_TK.shape[1]
        flat_N = idx_TK.reshape(-1)
        order_N = torch.argsort(flat_N, stable=True)
        token_N = order_N // k
        counts_E = expert_counts(flat_N, self.gate_proj.shape[0])
        x_ND = x_TD.index_select(0, token_N)  # its backward is a fast index_add, not index_put
        h_NI = F.silu(grouped_mm(x_ND, self.gate_proj, counts_E))
        h_NI = h_NI * grouped_mm(x_ND, self.up_proj, counts_E)
        y_ND = grouped_mm(h_NI, self.down_proj, counts_E)
        y_ND = y_ND * w_TK.reshape(-1)[order_N, None]
        out_TD = torch.zeros_like(x_TD)
        return out_TD.index_add(0, token_N, y_ND.to(x_TD.dtype))


def expert_counts(idx_N: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Rows routed to each expert ``[E]`` (int64). ``index_add`` rather than ``bincount``: its
    shape is static, and a data-dependent shape stops ``torch.compile``."""
    return idx_N.new_zeros(n_experts).index_add_(0, idx_N, torch.ones_like(idx_N))


def grouped_mm(x_ND: torch.Tensor, w_EOD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
    """Rows of ``x_ND`` sorted by expert (``counts_E`` rows each) times that expert's
    ``w_EOD[e].T`` → ``[N, O]``. Uses ``torch._grouped_mm`` when this build supports the
    shapes, else one matmul per non-empty expert (a loop over experts, never over tokens)."""
    if w_EOD.dtype != x_ND.dtype:  # under autocast activations arrive in bf16, weights in fp32
        w_EOD = w_EOD.to(x_ND.dtype)
    # few rows (decode): the CPU grouped kernel visits every expert; loop over the used ones
    if x_ND.shape[0] >= w_EOD.shape[0] and _grouped_mm_ok(x_ND, w_EOD):
        offs = torch.cumsum(counts_E, 0).to(torch.int32)
        return grouped_mm_op(x_ND, w_EOD, offs)
    outs = [chunk @ w_EOD[e].T
            for e, chunk in enumerate(x_ND.split(counts_E.tolist())) if chunk.shape[0]]
    if not outs:
        return x_ND.new_zeros(0, w_EOD.shape[1])
    return torch.cat(outs)


def _grouped_mm_ok(x_ND: torch.Tensor, w_EOD: torch.Tensor) -> bool:
    if not hasattr(torch, "_grouped_mm") or x_ND.device.type not in ("cpu", "cuda"):
        return False
    if x_ND.dtype != w_EOD.dtype or x_ND.shape[0] == 0:
        return False
    if x_ND.dtype not in (torch.float32, torch.bfloat16):
        return False
    # strides must be multiples of 16 bytes
    return all((dim * x_ND.element_size()) % 16 == 0 for dim in w_EOD.shape[1:])


def moe_reference(experts: Experts, x_TD: torch.Tensor, w_TK: torch.Tensor, idx_TK: torch.Tensor):
    """The plain per-expert loop (as in DeepSeek's ``inference/model.py``), for tests."""
    out_TD = torch.zeros_like(x_TD)
    for e in range(experts.gate_proj.shape[0]):
        token_idx, slot = torch.where(idx_TK == e)
        if token_idx.numel() == 0:
            continue
        x = x_TD[token_idx]
        h = F.silu(x @ experts.gate_proj[e].T) * (x @ experts.up_proj[e].T)
        y = (h @ experts.down_proj[e].T) * w_TK[token_idx, slot, None]
        out_TD.index_add_(0, token_idx, y.to(x_TD.dtype))
    return out_TD


class DeepseekMoE(nn.Module):
    """``mlp`` of a MoE layer: ``gate`` (router), ``experts`` (routed), ``shared_experts``."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.gate = Router(config)
        self.experts = Experts(config)
        self.shared_experts = None
        if config.n_shared_experts:
            width = config.moe_intermediate_size * config.n_shared_experts
            self.shared_experts = SwiGLU(config.hidden_size, width)

    def forward(self, x_BTD: torch.Tensor, reference: bool = False):
        """Returns ``(y_BTD, RouterStats)``."""
        x_TD = x_BTD.reshape(-1, x_BTD.shape[-1])
        w_TK, idx_TK, scores_TE = self.gate(x_TD)
        if reference:
            y_TD = moe_reference(self.experts, x_TD, w_TK, idx_TK)
        else:
            y_TD = self.experts(x_TD, w_TK, idx_TK)
        y_BTD = y_TD.view_as(x_BTD)
        if self.shared_experts is not None:
            y_BTD = y_BTD + self.shared_experts(x_BTD)
        counts_E = expert_counts(idx_TK.reshape(-1), scores_TE.shape[-1])
        stats = RouterStats(self.layer_idx, counts_E, scores_TE, idx_TK)
        return y_BTD, stats
