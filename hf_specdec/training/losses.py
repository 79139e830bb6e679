"""FSPAD / EAGLE distillation losses (arXiv 2408.15562; research/fspad.md sections 2-3).

Symbols: m_t the loss mask (1 on response tokens), f_{t+1} the target's next feature, p_T = softmax of the
target's logits lm_head(f_{t+1}); out_regress_t and out_hidden_t the head's two output halves (the same
vector for a head without PAD).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def feature_regression_loss(out_regress: torch.Tensor, next_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """vloss = sum_t m_t * mean_d SmoothL1(out_regress_t, f_{t+1}) / sum_t m_t.  Shapes [B, T, H], mask [B, T]."""
    per_token = F.smooth_l1_loss(out_regress.float(), next_features.float(), reduction="none").mean(-1)
    return _masked_mean(per_token, mask)


def soft_label_ce_loss(draft_logits: torch.Tensor, target_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ploss = -sum_t m_t * sum_v p_T(v) log softmax(draft_logits_t)(v) / sum_t m_t.  Logits [B, T, V]."""
    p_target = target_logits.float().softmax(-1)
    per_token = -(p_target * draft_logits.float().log_softmax(-1)).sum(-1)
    return _masked_mean(per_token, mask)


def topk_distillation_loss(draft_logits: torch.Tensor, target_logits: torch.Tensor, mask: torch.Tensor,
                           k: int) -> torch.Tensor:
    """kloss = -sum_t m_t * sum_{v in top_k(p_T)} p^_T(v) log softmax(draft_logits_t)(v) / sum_t m_t, with
    p^_T = p_T renormalised over the target's k most likely tokens (HASS's top-K distillation): the soft label
    without its tail, the tokens a tree can hold. k >= V is ploss."""
    p_target = target_logits.float().softmax(-1)
    top_p, top = p_target.topk(min(k, p_target.shape[-1]), dim=-1)
    log_q = draft_logits.float().log_softmax(-1).gather(-1, top)
    per_token = -((top_p / top_p.sum(-1, keepdim=True)) * log_q).sum(-1)
    return _masked_mean(per_token, mask)


def fspad_loss(out_regress, draft_logits, next_features, target_logits, mask, w_regress=1.0, w_logits=0.1,
               w_topk=0.0, topk=10):
    """loss = w_regress * vloss + w_logits * ploss (the paper: 1.0 and 0.1) [+ w_topk * kloss, off by default].
    Returns (loss, vloss, ploss)."""
    vloss = feature_regression_loss(out_regress, next_features, mask)
    ploss = soft_label_ce_loss(draft_logits, target_logits, mask)
    loss = w_regress * vloss + w_logits * ploss
    if w_topk:
        loss = loss + w_topk * topk_distillation_loss(draft_logits, target_logits, mask, topk)
    return loss, vloss, ploss


def feature_noise(features: torch.Tensor, generator: torch.Generator | None = None, scale: float = 0.2) -> torch.Tensor:
    """EAGLE's training noise on the input features: (U - 0.5) * scale * 512 / L, U ~ Uniform[0, 1),
    L the sequence length (dim -2)."""
    u = torch.rand(features.shape, generator=generator, device=features.device, dtype=torch.float32)
    return features + ((u - 0.5) * scale * 512 / features.shape[-2]).to(features.dtype)
