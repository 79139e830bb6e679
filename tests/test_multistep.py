"""Multi-step training (training/multistep.py): one step is today's loss, and step j sees and computes exactly
what the depth-(j-1) node does while drafting."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_target, train_killed_then_resumed

from hf_specdec import FSPADDraftModel
from hf_specdec.strategies.common import SpecDecodeStats
from hf_specdec.strategies.drafters import HeadDrafter
from hf_specdec.training.features import last_hidden_states
from hf_specdec.training.losses import feature_noise, fspad_loss
from hf_specdec.training.multistep import step_visibility, unrolled_loss, unrolled_outputs
from hf_specdec.tree import tree_attention_mask


@pytest.fixture(scope="module")
def pair():
    target = tiny_target("llama")
    torch.manual_seed(4)
    head = FSPADDraftModel.from_target(target).float()
    with torch.no_grad():  # a head whose outputs differ from the target's features (not all-equal logits)
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return target, head


def batch_for(target, rows=2, length=14, seed=0, all_trained=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 128, (rows, length), generator=g)
    mask = torch.ones(rows, length, dtype=torch.bool)
    if not all_trained:
        mask[:, : length // 3] = False  # the prompt
        mask[1, -3:] = False  # right padding of the second row
    with torch.no_grad():
        features = last_hidden_states(target, ids)
    return {"input_ids": ids, "features": features, "loss_mask": mask}


def todays_outputs(head, batch, generator):
    """Single-step training as it was before multi-step existed, restated: pairs (x_{t+1}, f_t + noise),
    causal attention, trained where f_{t+1} is a response token."""
    f = batch["features"].float()
    out = head(input_ids=batch["input_ids"][:, 1:], features=feature_noise(f[:, :-1], generator=generator))
    keep = batch["loss_mask"][:, 1:]
    target_logits = head.compute_logits(f[:, 1:][keep])
    return out.features[keep], head.compute_logits(out.hidden_states[keep]), f[:, 1:][keep], target_logits


def test_one_step_is_todays_loss_exactly(pair):
    target, head = pair
    batch = batch_for(target)
    loss_fn = lambda r, l, f, t: fspad_loss(r, l, f, t, torch.ones(l.shape[0]))  # noqa: E731
    want = loss_fn(*todays_outputs(head, batch, torch.Generator().manual_seed(7)))
    for steps in (1, 3):  # the first step of a longer unroll is untouched by the later ones
        results = unrolled_outputs(head, batch, torch.Generator().manual_seed(7), steps=steps)
        assert len(results) == steps
        total, per_step = unrolled_loss(results, loss_fn)
        for got, expected in zip(per_step[0], want):
            assert torch.equal(got, expected)
        if steps == 1:
            assert torch.equal(total, want[0])
        else:
            assert torch.allclose(total, sum(0.8**j * per_step[j][0] for j in range(steps)))


@pytest.mark.parametrize("step", [2, 3, 4])
def test_step_visibility_is_the_drafting_mask(step):
    """Step j at position p is the depth-(j-1) node of a chain rooted after real position p - j + 1: build that
    node's drafting mask and map its columns to (step, position)."""
    T, d = 12, step - 1
    training = step_visibility(T, step)
    for p in range(step - 1, T):
        L = p - d + 1  # real pairs at head positions 0..L-1; the depth-k node sits at position L + k - 1
        chain = torch.ones(d, d, dtype=torch.bool).tril()[None]  # ancestors among the chain's slots
        drafting = tree_attention_mask(chain, L, torch.float32)[0, 0, -1] == 0  # the depth-d node's row
        seen_drafting = {(1, q) for q in range(L) if drafting[q]}
        seen_drafting |= {(k + 1, L + k - 1) for k in range(1, d + 1) if drafting[L + k - 1]}
        seen_training = {(c // T + 1, c % T) for c in training[p].nonzero().flatten().tolist()}
        assert seen_training == seen_drafting, (step, p)


def test_step_one_is_causal():
    assert torch.equal(step_visibility(7, 1), torch.ones(7, 7, dtype=torch.bool).tril())


@torch.no_grad()
def test_unrolled_steps_compute_what_the_drafter_computes(pair):
    """Step 2 / 3 at position p = the drafter's depth-1 / depth-2 expansion of a chain whose tokens are the
    true ones, after catching up on the real pairs."""
    target, head = pair
    batch = batch_for(target, rows=1, length=16, all_trained=True)
    results = unrolled_outputs(head, batch, None, steps=3)
    ids, f = batch["input_ids"][0], batch["features"]
    for L in (2, 5, 9, 12):
        drafter = HeadDrafter(head, SpecDecodeStats())
        _, fed = drafter.catch_up(ids[None, 1 : L + 1], f[:, :L].float(), 0)  # pairs (x_{t+1}, f_t), t < L
        expand = drafter.expand(L)
        slots = torch.zeros(1, 0, 0, dtype=torch.bool)
        for depth in (1, 2):
            S = slots.shape[1]
            new_row = torch.ones(1, 1, S + 1, dtype=torch.bool)
            slots = torch.cat([torch.nn.functional.pad(slots, (0, 1)), new_row], 1)
            log_probs, features = expand(ids[None, L + depth : L + depth + 1], fed[:, None], new_row, depth)
            fed = features[:, 0]
            p = L + depth - 1  # the head position of this node
            step = depth + 1
            _, logits, _, _ = results[step - 1]
            trained_from = step - 1  # rows of step j start at position j - 1
            torch.testing.assert_close(logits[p - trained_from].log_softmax(-1), log_probs[0, 0], rtol=1e-4, atol=1e-4)


def test_multistep_training_lowers_every_steps_loss_and_resumes(tmp_path, monkeypatch):
    import json

    from test_training import _args, random_samples

    from hf_specdec.training import train as train_mod
    from hf_specdec.training.features import extract_features, load_samples

    target = tiny_target("llama")
    features = tmp_path / "features"
    extract_features(target, random_samples(40), features)
    samples = load_samples(features)
    torch.manual_seed(0)
    before = train_mod.evaluate(FSPADDraftModel.from_target(target).float(), samples, 256, steps=3)
    head_dir = train_mod.train(_args(tmp_path, features, unroll=3, max_steps=60, save_every=0), target=target)
    head = FSPADDraftModel.from_pretrained(head_dir).attach_target(target)
    after = train_mod.evaluate(head, samples, 256, steps=3)
    assert after["loss"] < 0.9 * before["loss"]
    for j in (2, 3):
        assert after[f"top1_step{j}"] > before[f"top1_step{j}"]
    metrics = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(metrics[0]["step_losses"]) == 3 and "top1_step3" in metrics[-1]["val"]

    # killed after a checkpoint and resumed, the unrolled run reaches the same head
    straight = train_mod.train(_args(tmp_path / "a", features, unroll=2, max_steps=6, save_every=3), target=target)
    resumed = train_killed_then_resumed(
        monkeypatch, _args(tmp_path / "b", features, unroll=2, max_steps=6, save_every=3), target, kill_at=3)
    a, b = FSPADDraftModel.from_pretrained(straight).state_dict(), FSPADDraftModel.from_pretrained(resumed).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@torch.no_grad()
def test_later_steps_take_step_one_target_logits_at_their_positions(pair):
    """Steps j >= 2 reuse step 1's target logits (no second lm_head product): each equals a fresh product of the
    target's next features at that step's trained positions."""
    target, head = pair
    batch = batch_for(target, rows=2, length=14)
    results = unrolled_outputs(head, batch, None, steps=3)
    f_next = batch["features"].float()[:, 1:]
    for step, (_, _, next_features, target_logits) in enumerate(results, start=1):
        keep = batch["loss_mask"][:, 1:] & (torch.arange(f_next.shape[1]) >= step - 1)
        assert torch.equal(next_features, f_next[keep])
        torch.testing.assert_close(target_logits, head.compute_logits(f_next[keep]), rtol=1e-6, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("k", [24, 64])
def test_chain_top_k_trains_only_chains_a_tree_could_hold(pair, k):
    """With chain_top_k K, step j >= 2 keeps position p only if step j-1 ranked the true token x_{p+1} in its top
    K at p - 1 and that position was kept (or made no prediction there); the kept rows are the unmasked run's
    rows at those positions, and K = V masks nothing."""
    from hf_specdec.training.multistep import in_top_k

    target, head = pair
    batch = batch_for(target, rows=2, length=14)
    full = unrolled_outputs(head, batch, None, steps=3)
    masked = unrolled_outputs(head, batch, None, steps=3, chain_top_k=k)
    tokens, trained = batch["input_ids"][:, 1:], batch["loss_mask"][:, 1:]
    T = tokens.shape[1]
    reachable = torch.ones_like(trained)
    kept_rows = []
    for step in (1, 2, 3):
        keep = trained & (torch.arange(T) >= step - 1)  # the unmasked run's positions
        sel = reachable[keep]
        kept_rows.append(int(sel.sum()))
        for got, want in zip(masked[step - 1], full[step - 1]):  # (an lm_head product over fewer rows may round apart)
            torch.testing.assert_close(got, want[sel], rtol=1e-5, atol=1e-6)
        ranked = torch.ones_like(trained)
        logits = full[step - 1][1]
        for row, (b, p) in enumerate(keep.nonzero().tolist()):
            if p + 1 < T:
                ranked[b, p] = bool(in_top_k(logits[row : row + 1], tokens[b, p + 1 : p + 2], k))
        reachable = torch.cat([torch.ones_like(trained[:, :1]), (reachable & ranked)[:, :-1]], dim=1)
    assert kept_rows[2] < kept_rows[1] < kept_rows[0]  # the random head misses: both later steps lose rows
    everything = unrolled_outputs(head, batch, None, steps=3, chain_top_k=full[0][1].shape[-1])
    for got, want in zip(everything, full):
        assert all(torch.equal(a, b) for a, b in zip(got, want))  # the same rows: the same products


def test_in_top_k_maps_draft_ids_to_target_ids():
    from hf_specdec.training.multistep import in_top_k

    logits = torch.tensor([[0.1, 3.0, 2.0], [5.0, 0.0, 1.0]])
    draft_to_target = torch.tensor([7, 11, 13])
    assert in_top_k(logits, torch.tensor([13, 13]), 2, draft_to_target).tolist() == [True, True]
    assert in_top_k(logits, torch.tensor([7, 11]), 1, draft_to_target).tolist() == [False, False]
    assert in_top_k(logits, torch.tensor([1, 0]), 1).tolist() == [True, True]
