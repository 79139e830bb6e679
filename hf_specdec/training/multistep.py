"""Multi-step training (EAGLE-3's training-time test, HASS's context alignment; research/heads.md section 1).

Drafting runs the head on its own outputs: the depth-d node of a tree rooted after L committed tokens sits at
head position p = L + d - 1, reads (x_{p+1}, f^_p) with f^_p the head's regressed feature from its parent, and
attends to the real pairs at positions 0..L-1 plus its ancestors. Trained only on the target's features
(step 1), the head never sees that input. Unrolled step j >= 2 shows it: every position p at once plays the
depth-(j - 1) node, reading the true token x_{p+1} and step j-1's regressed feature at p - 1, with the
attention of that node:

    step j, position p sees   step 1's keys at q <= p - j + 1      (the real pairs, root's included)
                              step k's key  at q = p - j + k        for k = 2..j (its ancestors, itself last)

All steps are trained on the same targets (f_{p+1}, and softmax(lm_head(f_{p+1})) for the token x_{p+2}), at
positions p >= j - 1 (where the whole chain exists), with weight decay^(j-1). One step is today's training
exactly.

With `chain_top_k` K (GRIFFIN's masking), step j >= 2 trains position p only where drafting could reach that
chain: step j-1 ranked the true token x_{p+1} among its top K at p - 1, and that position was itself reachable.
A chain the tree would never hold teaches the head nothing it uses.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .losses import feature_noise


def step_visibility(T: int, step: int, device=None) -> torch.Tensor:
    """bool [T, step * T]: which keys query position p of unrolled step `step` (1-based) attends to; column
    (k - 1) * T + q is step k's key at position q (module docstring)."""
    p = torch.arange(T, device=device)[:, None]
    q = torch.arange(T, device=device)[None, :]
    blocks = [q <= p - step + 1] + [q == p - step + k for k in range(2, step + 1)]
    return torch.cat(blocks, dim=1)


def step_mask(T: int, step: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """step_visibility as an additive 4D mask [1, 1, T, step * T] for the head's attention."""
    visible = step_visibility(T, step, device)
    return torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill(~visible, torch.finfo(dtype).min)[None, None]


def step_positions(trained: torch.Tensor, step: int) -> torch.Tensor:
    """bool [B, T]: the positions unrolled step `step` is trained at (without chain masking): trained ones where its
    whole chain exists, p >= step - 1. `unrolled_outputs` returns that step's rows in this order."""
    return trained & (torch.arange(trained.shape[1], device=trained.device) >= step - 1)


def in_top_k(draft_logits: torch.Tensor, tokens: torch.Tensor, k: int, draft_to_target: torch.Tensor | None = None):
    """bool [N]: whether target token tokens[n] is among the k highest draft_logits[n] ([N, V'], draft ids that
    `draft_to_target` maps to target ids; None: V' is the target vocabulary)."""
    top = draft_logits.topk(min(k, draft_logits.shape[-1]), dim=-1).indices
    if draft_to_target is not None:
        top = draft_to_target.to(top.device)[top]
    return (top == tokens[:, None]).any(-1)


def unrolled_outputs(head, batch: dict, noise_generator: torch.Generator | None, steps: int = 1, wrapped=None,
                     chain_top_k: int | None = None):
    """The head unrolled `steps` times over a batch in training layout (input_ids [B, T+1], features
    [B, T+1, H], loss_mask [B, T+1]). Returns one tuple per step, for its N_j trained positions: (regressed
    f_{p+1} [N_j, H], draft logits [N_j, V'], target f_{p+1} [N_j, H], target logits [N_j, V']); logits only
    where trained (the lm_head products are most of a step's cost). `wrapped`: the head as accelerate prepared
    it, whose forward must run for gradients to sync. `chain_top_k`: train later steps only on reachable chains
    (module docstring)."""
    model = head if wrapped is None else wrapped
    features = batch["features"].float()
    f_in, f_next = features[:, :-1], features[:, 1:]
    if noise_generator is not None:
        f_in = feature_noise(f_in, generator=noise_generator)
    tokens, trained = batch["input_ids"][:, 1:], batch["loss_mask"][:, 1:]
    T = tokens.shape[1]
    # step 1 is causal attention (right padding never reaches a real position); later steps attend to the
    # keys the earlier steps left in this cache
    cache = DynamicCache() if steps > 1 else None
    results, fed, first_keep, first_target_logits = [], f_in, None, None
    reachable = torch.ones_like(trained)  # where this step's chain could be in a drafted tree
    next_tokens = torch.cat([tokens[:, 1:], torch.zeros_like(tokens[:, :1])], dim=1)  # x_{p+2} at p
    to_target = head.draft_to_target if getattr(head.config, "draft_vocab_size", None) is not None else None
    for step in range(1, steps + 1):
        if step == 1:
            out = model(input_ids=tokens, features=fed, cache=cache)
        else:
            out = model(input_ids=tokens, features=fed, cache=cache,
                        position_ids=torch.arange(T, device=tokens.device)[None],
                        attention_mask=step_mask(T, step, out.hidden_states.dtype, tokens.device))
        keep = step_positions(trained, step) & reachable
        draft_logits = head.compute_logits(out.hidden_states[keep])
        if step == 1:
            with torch.no_grad():
                target_logits = head.compute_logits(f_next[keep].to(out.hidden_states.dtype))
            first_keep, first_target_logits = keep, target_logits
        else:  # step j's positions are a subset of step 1's, with the same targets: no lm_head product again
            target_logits = first_target_logits[keep[first_keep]]
        results.append((out.features[keep], draft_logits, f_next[keep], target_logits))
        if chain_top_k and step < steps:
            # step j + 1 at p + 1 reads x_{p+2}: reachable if step j at p was and ranked x_{p+2} in its top K (where
            # step j made no prediction at a reachable p, nothing is known against it)
            ranked = torch.ones_like(trained)
            ranked[keep] = in_top_k(draft_logits.detach(), next_tokens[keep], chain_top_k, to_target)
            reachable = torch.cat([torch.ones_like(trained[:, :1]), (reachable & ranked)[:, :-1]], dim=1)
        # step j's regressed feature at p - 1 is what step j + 1 reads at p (position 0 has none: never trained)
        fed = torch.cat([torch.zeros_like(out.features[:, :1]), out.features[:, :-1]], dim=1)
    return results


def unrolled_loss(results, loss_fn, decay: float = 0.8):
    """sum_j decay^(j-1) * loss_j over the steps, and each step's (loss, vloss, ploss)."""
    per_step = [loss_fn(*r) for r in results]
    total = sum(decay**j * losses[0] for j, losses in enumerate(per_step))
    return total, per_step
