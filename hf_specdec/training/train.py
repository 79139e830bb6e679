"""Train an FSPAD (or EAGLE-2 baseline) draft head on target features, stored or computed on the fly. One
file, top to bottom.

    hf-specdec train --features runs/smollm2/features --variant fspad  --out runs/smollm2/fspad
    hf-specdec train --features runs/smollm2/features --variant eagle2 --out runs/smollm2/eagle2
    hf-specdec train --samples runs/v3/*.jsonl --max-length 2048 --unroll 3 --out $OUT/fspad   (features on the fly)

With `--samples` (what `hf-specdec distill` writes) the target computes each batch's features itself, as
`hf-specdec features` would store them (same function, same dtype): no feature folder, so a short run on a
GPU machine needs only the samples and writes only checkpoints and the head. Samples are ordered by id in
both modes, so the batches of a run are the same whichever way its features come.

The same command resumes after a kill (from the newest checkpoint in --out/checkpoints), or after a run that
`--max-minutes` stopped (which checkpoints and writes the head so far: a time-boxed run on a lent machine). `accelerate launch`
runs it on one or several GPUs; plain `hf-specdec train` runs it on this CPU.

Per step, for a batch of samples with tokens x_0..x_{T-1} and features f_0..f_{T-1}: the head reads
(x_{t+1}, f_t + noise) and is trained on f_{t+1} (the regression half) and on softmax(lm_head(f_{t+1})) (the
logit half), on positions whose f_{t+1} is a response token (losses.fspad_loss).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .features import is_validation, load_samples, read_manifest
from .losses import fspad_loss
from .multistep import step_positions, unrolled_loss, unrolled_outputs


# ------------------------------------------------------------------------------------------------ batches
def make_batches(samples: list[dict], batch_tokens: int, seed: int) -> list[list[int]]:
    """Sample indices grouped into batches of similar length whose padded size stays under `batch_tokens`.

    Deterministic in `seed`, so a resumed run sees the same batches in the same order.
    """
    rng = random.Random(seed)
    order = list(range(len(samples)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), 256):  # sort within windows: similar lengths, still shuffled overall
        window = sorted(order[start : start + 256], key=lambda i: len(samples[i]["input_ids"]))
        batch, width = [], 0
        for i in window:
            n = len(samples[i]["input_ids"])
            if batch and max(width, n) * (len(batch) + 1) > batch_tokens:
                batches.append(batch)
                batch, width = [], 0
            batch.append(i)
            width = max(width, n)
        if batch:
            batches.append(batch)
    rng.shuffle(batches)
    return batches


def collate(samples: list[dict]) -> dict:
    """Right-padded tensors: input_ids [B, T], attention_mask [B, T], loss_mask [B, T] (False on padding), and
    features [B, T, H] when the samples carry them (else `OnTheFlyFeatures` adds them)."""
    width = max(len(s["input_ids"]) for s in samples)
    stored = "features" in samples[0]
    batch = {
        "input_ids": torch.zeros(len(samples), width, dtype=torch.long),
        "attention_mask": torch.zeros(len(samples), width, dtype=torch.long),
        "loss_mask": torch.zeros(len(samples), width, dtype=torch.bool),
    }
    if stored:
        H = samples[0]["features"].shape[-1]
        batch["features"] = torch.zeros(len(samples), width, H, dtype=samples[0]["features"].dtype)
    for row, s in enumerate(samples):
        n = len(s["input_ids"])
        batch["input_ids"][row, :n] = s["input_ids"]
        batch["attention_mask"][row, :n] = 1
        batch["loss_mask"][row, :n] = s["loss_mask"]
        if stored:
            batch["features"][row, :n] = s["features"]
    return batch


def token_samples(paths, max_length: int) -> list[dict]:
    """Distilled samples ({id, input_ids, loss_mask} JSONL) as tensors, cut to `max_length` tokens, without
    those left with no response token: what `hf-specdec features` would store, minus the features."""
    from .data import read_samples

    samples = []
    for path in paths:
        for row in read_samples(path):
            ids, mask = row["input_ids"][:max_length], row["loss_mask"][:max_length]
            if any(mask):
                samples.append({"id": str(row["id"]), "input_ids": torch.tensor(ids, dtype=torch.long),
                                "loss_mask": torch.tensor(mask, dtype=torch.bool)})
    return samples


class OnTheFlyFeatures:
    """Adds the target's features to a batch, as `hf-specdec features` stores them (`last_hidden_states` of the
    target in `dtype`, kept in bf16). With `remember`, the features of each batch seen are kept (keyed by its
    token ids and mask), so that evaluating several heads on the same batches runs the target once per batch:
    the target's forward is most of an evaluation's time. (Not for training: every epoch would stay in memory.)"""

    def __init__(self, target, dtype: torch.dtype, remember: bool = False):
        self.model = target if target.dtype == dtype else copy.deepcopy(target).to(dtype)
        self.memory = {} if remember else None
        self.forwards = 0

    def __call__(self, batch: dict) -> dict:
        from .features import last_hidden_states

        key = None
        if self.memory is not None:
            key = (tuple(batch["input_ids"].shape), batch["input_ids"].cpu().numpy().tobytes(),
                   batch["attention_mask"].cpu().numpy().tobytes())
            if key in self.memory:
                return {**batch, "features": self.memory[key].to(batch["input_ids"].device)}
        model = self.model.to(batch["input_ids"].device)
        with torch.no_grad():
            hidden = last_hidden_states(model, batch["input_ids"], batch["attention_mask"]).to(torch.bfloat16)
        self.forwards += 1
        if key is not None:
            self.memory[key] = hidden
        return {**batch, "features": hidden}


# ------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def target_probabilities(head, target_logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The target's next-token probabilities [N, V'] at the head's draft tokens, normalised over the target's
    whole vocabulary (its lm_head applied to `features` [N, H]) when the head drafts from a reduced one."""
    if head.config.draft_vocab_size is None:
        return target_logits.float().softmax(-1)
    log_normaliser = head._parts().lm_head(features.to(target_logits.dtype)).float().logsumexp(-1, keepdim=True)
    return (target_logits.float() - log_normaliser).exp()


def accepted_lengths(hits: list[torch.Tensor]) -> torch.Tensor:
    """Draft tokens a drafted chain of len(hits) levels accepts at greedy, per position: hits[j-1] [B, T] says
    whether step j at position p drafted the target's next token (its argmax within the drafted candidates), and
    the level-j draft of the chain rooted at p is step j's at p + j - 1, reached only if every level before it
    was accepted: sum_j prod_{i <= j} hits[i-1][p + i - 1]. Exact with teacher forcing: an accepted draft is the
    true token, so the next level reads the input training fed it. [B, T]."""
    B, T = hits[0].shape
    alive = torch.ones(B, T, dtype=torch.bool, device=hits[0].device)
    total = torch.zeros(B, T, device=hits[0].device)
    for i, hit in enumerate(hits):
        shifted = torch.zeros_like(alive)
        shifted[:, : T - i] = hit[:, i:]  # level i + 1 of the chain at p: step i + 1 at p + i
        alive = alive & shifted
        total += alive.float()
    return total


@torch.no_grad()
def evaluation_sums(head, samples: list[dict], batch_tokens: int, top_k: int = 3, steps: int = 1, featurize=None,
                    children: int = 4) -> dict:
    """`evaluate`'s sums over the positions, with their counts ("tokens" for step 1, "count_step{j}"), so that
    the sums of disjoint sample sets add up to those of their union (`add_sums`)."""
    from ..verification import deterministic_acceptance

    was_training = head.training
    head.eval()
    sums = {"loss": 0.0, "vloss": 0.0, "ploss": 0.0, "top1": 0.0, f"top{top_k}": 0.0, "accept1": 0.0,
            f"accept{children}": 0.0, "confidence1": 0.0, "tokens": 0}
    for j in range(2, steps + 1):
        sums.update({f"top1_step{j}": 0.0, f"accept1_step{j}": 0.0, f"count_step{j}": 0})
    sums.update({"chain1": 0.0, f"chain{children}": 0.0})
    for idx in make_batches(samples, batch_tokens, seed=0):
        batch = collate([samples[i] for i in idx])
        if featurize is not None:
            batch = featurize({k: v.to(head.device) for k, v in batch.items()})
        results = unrolled_outputs(head, batch, None, steps)
        regress, logits, f_next, target_logits = results[0]
        n = logits.shape[0]
        if n == 0:
            continue
        loss, vloss, ploss = fspad_loss(regress, logits, f_next, target_logits, torch.ones(n))
        want = target_logits.argmax(-1)
        ranked = logits.topk(max(top_k, children), dim=-1).indices
        p = target_probabilities(head, target_logits, f_next)
        sums["loss"] += float(loss) * n
        sums["vloss"] += float(vloss) * n
        sums["ploss"] += float(ploss) * n
        sums["top1"] += float((ranked[:, 0] == want).sum())
        sums[f"top{top_k}"] += float((ranked[:, :top_k] == want[:, None]).any(-1).sum())
        sums["accept1"] += float(deterministic_acceptance(p, ranked[:, :1]).sum())
        sums[f"accept{children}"] += float(deterministic_acceptance(p, ranked[:, :children]).sum())
        sums["confidence1"] += float(logits.float().softmax(-1).amax(-1).sum())
        sums["tokens"] += n
        for j, (_, step_logits, step_features, step_target) in enumerate(results[1:], start=2):
            drafted = step_logits.argmax(-1, keepdim=True)
            sums[f"top1_step{j}"] += float((drafted[:, 0] == step_target.argmax(-1)).sum())
            p_step = target_probabilities(head, step_target, step_features)
            sums[f"accept1_step{j}"] += float(deterministic_acceptance(p_step, drafted).sum())
            sums[f"count_step{j}"] += step_logits.shape[0]
        # greedy accepted lengths of a top-1 chain and of a full `children`-ary tree, `steps` levels deep
        trained = batch["loss_mask"][:, 1:]
        for width in (1, children):
            hits = []
            for j, (_, step_logits, _, step_target) in enumerate(results, start=1):
                hit = torch.zeros_like(trained)
                ranked_j = step_logits.topk(width, dim=-1).indices
                hit[step_positions(trained, j)] = (ranked_j == step_target.argmax(-1, keepdim=True)).any(-1)
                hits.append(hit)
            sums[f"chain{width}"] += float(accepted_lengths(hits)[trained].sum())
    head.train(was_training)
    return sums


def add_sums(parts: list[dict]) -> dict:
    """The `evaluation_sums` of the union of disjoint sample sets."""
    return {k: sum(part[k] for part in parts) for k in parts[0]}


def evaluation_means(sums: dict) -> dict:
    """`evaluation_sums` as means: step-1 values per position ("tokens" kept as the count), step-j values per
    step-j position."""
    result = {}
    for key, value in sums.items():
        if key == "tokens" or key.startswith("count_step"):
            continue
        count = sums[f"count_step{key.rsplit('step', 1)[1]}"] if "_step" in key else sums["tokens"]
        result[key] = value / max(count, 1)
    result["tokens"] = sums["tokens"]
    return result


def evaluate(head, samples: list[dict], batch_tokens: int, top_k: int = 3, steps: int = 1, featurize=None,
             children: int = 4) -> dict:
    """Losses and top-1 / top-k accuracy of the head's token against the target's argmax on held-back samples
    (step 1: fed the target's features); with steps > 1 also `top1_step{j}`, the accuracy of the head's step-j
    prediction fed its own features (multistep.py), which multi-step training should raise. `featurize`: adds
    the features to samples that carry none (`OnTheFlyFeatures`).

    For sampling at T=1, what counts is not agreement with the argmax but the target's probability of the
    drafted tokens (`deterministic_acceptance`): `accept1` is the acceptance of the head's top-1 (a chain step;
    `accept1_step{j}` at step j), `accept{children}` of its `children` best tokens (a tree node's children at the
    default top-k), `confidence1` the head's own probability of its top-1. A head whose `confidence1` exceeds
    its `accept1` is over-confident, and its path probabilities overestimate acceptance when they size trees.
    `chain1` / `chain{children}`: the draft tokens a greedy cycle would accept from a top-1 chain / a full
    `children`-ary tree `steps` levels deep rooted at each position (`accepted_lengths`): tau - 1 of those trees
    on held-back text, without sizing or a node budget."""
    return evaluation_means(evaluation_sums(head, samples, batch_tokens, top_k, steps, featurize, children))


def token_counts(samples: list[dict], vocab_size: int) -> torch.Tensor:
    """How often each token occurs in the samples, response tokens weighing 4x: [vocab_size] float64."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for s in samples:
        counts.index_add_(0, s["input_ids"], 1.0 + 3.0 * s["loss_mask"].double())
    return counts


def draft_vocabulary(samples: list[dict], size: int, vocab_size: int) -> torch.Tensor:
    """The `size` most frequent tokens of the training samples (`token_counts`), sorted by id."""
    return token_counts(samples, vocab_size).topk(size).indices.sort().values


def shrink_draft_vocabulary(head, samples: list[dict], size: int) -> None:
    """Keep only the `size` most frequent of the head's own draft tokens (`token_counts` of the samples): a head
    step then scores fewer lm_head rows. The head's weights stay as they are (its draft lm_head is a slice of the
    target's, borrowed): only the normalisation of its draft distribution loses the dropped tokens. Re-attach the
    target afterwards, which re-slices the lm_head."""
    own = head.draft_to_target
    if not 0 < size <= own.shape[0]:
        raise ValueError(f"--draft-vocab {size} with --init: the head drafts from {own.shape[0]} tokens; a smaller "
                         f"vocabulary keeps 1..{own.shape[0]} of them.")
    counts = token_counts(samples, head.config.vocab_size)
    keep = own[counts[own.cpu()].topk(size).indices.to(own.device)].sort().values
    head.config.draft_vocab_size = size
    head.draft_to_target = keep


def check_features_match(manifest: dict, head, features) -> None:
    """The features and the head must come from the same target (embedding fingerprint), or nothing learnt transfers."""
    from ..draft.base import same_fingerprint

    if not same_fingerprint(manifest["target"]["fingerprint"], head.config.target_fingerprint):
        raise ValueError(f"The features in {features} were extracted from another target than the head's "
                         f"({head.config.name_or_path or 'the --model given'}); use features and a head of the same "
                         f"target model.")


# ------------------------------------------------------------------------------------------ checkpoints
def latest_checkpoint(out_dir: Path) -> Path | None:
    ckpts = sorted((out_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    complete = [p for p in ckpts if (p / "trainer_state.json").is_file()]  # written last: a cut save is ignored
    return complete[-1] if complete else None


def save_checkpoint(accelerator, out_dir: Path, state: dict, keep: int = 2) -> None:
    path = out_dir / "checkpoints" / f"step-{state['step']}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / "trainer_state.json").write_text(json.dumps(state))
        ckpts = sorted((out_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in ckpts[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- train
def parameter_groups(head, lr: float, extra_layers_lr: float | None) -> list[dict]:
    """The optimizer's parameter groups: one at `lr`, or with `extra_layers_lr` the extra decoder layers
    (FSPADConfig.num_extra_layers) in a group of their own at that rate. A layer grown into a trained head starts
    with zero output projections, so at the trained layer's continuation rate it barely moves in one epoch."""
    if extra_layers_lr is None:
        return [{"params": list(head.parameters()), "lr": lr}]
    extra = [p for n, p in head.named_parameters() if n.startswith("extra_layers.")]
    if not extra:
        raise ValueError("--extra-layers-lr: the head has no extra layers; give --extra-layers n (n >= 1) as well.")
    rest = [p for n, p in head.named_parameters() if not n.startswith("extra_layers.")]
    return [{"params": rest, "lr": lr}, {"params": extra, "lr": extra_layers_lr}]


@torch.enable_grad()  # whatever the caller's grad mode
def train(args, target=None, tokenizer=None) -> Path:
    """Train (or resume) per `args` (see `build_parser`). `target`/`tokenizer` skip loading the target again."""
    from transformers import get_cosine_schedule_with_warmup

    from ..draft import FSPADDraftModel
    from .prepare import DTYPES, load_target, require_training_extra

    accelerate = require_training_extra("accelerate", "hf-specdec train")
    Accelerator, set_seed = accelerate.Accelerator, accelerate.utils.set_seed

    if args.max_minutes is not None and (args.max_minutes < 0 or not args.save_every):
        raise ValueError(f"--max-minutes {args.max_minutes}: give a non-negative budget, with checkpoints "
                         "(--save-every > 0) so that the same command can continue the run.")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.cpu)
    manifest = read_manifest(args.features) if args.features else {"adapter": None}
    if target is None:
        target, tokenizer = load_target(args.model, DTYPES["float32"], manifest.get("adapter"))
    if args.features:
        samples, featurize = load_samples(args.features), None
    else:
        samples, featurize = token_samples(args.samples, args.max_length), OnTheFlyFeatures(target, DTYPES[args.feature_dtype])
    samples.sort(key=lambda s: s["id"])  # one order for stored and computed features
    val = [s for s in samples if is_validation(s["id"], args.val_fraction)]
    train_samples = [s for s in samples if not is_validation(s["id"], args.val_fraction)]
    if not train_samples:
        raise ValueError(f"{args.features} holds no training samples (all {len(samples)} fell in validation).")

    set_seed(args.seed)  # the head's initial weights
    if args.init:  # continue from a trained head: its variant and its draft vocabulary
        head = FSPADDraftModel.from_pretrained(args.init)
        if args.variant not in (None, head.config.variant):
            raise ValueError(f"--init {args.init} is a {head.config.variant} head, not {args.variant}; drop --variant "
                             "(a continued head keeps its own) or make it match.")
        args.variant = head.config.variant
        if args.draft_vocab not in (None, head.config.draft_vocab_size):
            if head.config.draft_vocab_size is None:
                raise ValueError(f"--init {args.init} scores the full vocabulary; --draft-vocab with --init keeps "
                                 "part of a head's own draft vocabulary (train a new head for a first one).")
            shrink_draft_vocabulary(head, train_samples, args.draft_vocab)
        head.attach_target(target, tokenizer)
        if args.extra_layers is not None and args.extra_layers != head.config.num_extra_layers:
            if args.extra_layers < head.config.num_extra_layers:
                raise ValueError(f"--extra-layers {args.extra_layers}: --init {args.init} has "
                                 f"{head.config.num_extra_layers} already; a continued head only grows.")
            head = head.with_extra_layers(args.extra_layers)  # the new layers start adding nothing
    else:
        args.variant = args.variant or "fspad"
        overrides = {"draft_vocab_size": args.draft_vocab} if args.draft_vocab else {}
        if args.extra_layers:
            overrides["num_extra_layers"] = args.extra_layers
        head = FSPADDraftModel.from_target(target, tokenizer, variant=args.variant,
                                           target_adapter=manifest.get("adapter"), **overrides)
    if args.draft_vocab and not args.init:
        head.draft_to_target.copy_(draft_vocabulary(train_samples, args.draft_vocab, head.config.vocab_size))
        head.attach_target(target, tokenizer)  # re-slice the lm_head rows for the chosen vocabulary
    head = head.float().train()
    if args.features:  # (features computed on the fly come from this very target)
        check_features_match(manifest, head, args.features)

    optimizer = torch.optim.AdamW(parameter_groups(head, args.lr, args.extra_layers_lr), lr=args.lr,
                                  betas=(0.9, 0.95), weight_decay=args.weight_decay)
    steps_per_epoch = len(make_batches(train_samples, args.batch_tokens, seed=args.seed)) // accelerator.num_processes
    total_steps = args.max_steps or steps_per_epoch * args.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, total_steps)
    head, optimizer, scheduler = accelerator.prepare(head, optimizer, scheduler)
    raw_head = accelerator.unwrap_model(head)
    raw_head.attach_target(target, tokenizer)
    if raw_head._target.draft_lm_weight is not None:
        raw_head._target.draft_lm_weight = raw_head._target.draft_lm_weight.to(accelerator.device)

    def step_loss(regress, logits, f_next, target_logits):
        ones = torch.ones(logits.shape[0], device=logits.device)
        return fspad_loss(regress, logits, f_next, target_logits, ones, 1.0, args.logit_weight, args.topk_weight, args.topk)

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0}
    ckpt = latest_checkpoint(out_dir) if not args.restart else None
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        state = json.loads((ckpt / "trainer_state.json").read_text())
        accelerator.print(f"resuming from {ckpt} (step {state['step']})")
    metrics_path = out_dir / "metrics.jsonl"

    def log(record):
        if accelerator.is_main_process:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    bar = tqdm(total=total_steps, initial=state["step"], desc=f"train {args.variant}", disable=not accelerator.is_main_process)
    started = time.time()

    def out_of_time() -> bool:
        return args.max_minutes is not None and time.time() - started >= 60 * args.max_minutes

    while state["step"] < total_steps and not out_of_time():
        batches = make_batches(train_samples, args.batch_tokens, seed=args.seed + state["epoch"])
        # each process takes every n-th batch; all take the same number, so none waits on a missing one
        per_process = len(batches) // accelerator.num_processes
        batches = batches[accelerator.process_index :: accelerator.num_processes][:per_process]
        for b in range(state["batch_in_epoch"], len(batches)):
            if state["step"] >= total_steps or out_of_time():
                break
            batch = {k: v.to(accelerator.device) for k, v in collate([train_samples[i] for i in batches[b]]).items()}
            if featurize is not None:
                batch = featurize(batch)
            noise = torch.Generator(device=accelerator.device).manual_seed(args.seed * 1_000_003 + state["step"])
            with accelerator.autocast():
                results = unrolled_outputs(raw_head, batch, noise, args.unroll, wrapped=head, chain_top_k=args.unroll_top_k)
                loss, per_step = unrolled_loss(results, step_loss, args.unroll_decay)
            _, vloss, ploss = per_step[0]
            _, logits, _, target_logits = results[0]
            accelerator.backward(loss)
            accelerator.clip_grad_value_(head.parameters(), args.clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.update(step=state["step"] + 1, batch_in_epoch=b + 1)
            bar.update(1)
            if state["step"] % args.log_every == 0:
                with torch.no_grad():
                    acc = float((logits.argmax(-1) == target_logits.argmax(-1)).float().mean())
                bar.set_postfix(loss=f"{loss.item():.3f}", top1=f"{acc:.3f}")
                log({"step": state["step"], "loss": loss.item(), "vloss": vloss.item(), "ploss": ploss.item(),
                     "step_losses": [losses[0].item() for losses in per_step],
                     "train_top1": acc, "lr": scheduler.get_last_lr()[0], "elapsed_s": time.time() - started})
            if args.save_every and state["step"] % args.save_every == 0:
                save_checkpoint(accelerator, out_dir, state)
            if args.eval_every and state["step"] % args.eval_every == 0 and val:
                log({"step": state["step"], "val": evaluate(raw_head, val, args.batch_tokens, steps=args.unroll, featurize=featurize)})
        else:  # epoch finished
            state.update(epoch=state["epoch"] + 1, batch_in_epoch=0)
            if val:
                result = evaluate(raw_head, val, args.batch_tokens, steps=args.unroll, featurize=featurize)
                log({"step": state["step"], "epoch": state["epoch"], "val": result})
                accelerator.print(f"epoch {state['epoch']}: val top1 {result['top1']:.3f} top3 {result['top3']:.3f}")
    bar.close()
    if args.save_every:
        save_checkpoint(accelerator, out_dir, state)
    final = {"step": state["step"], "final": True}
    if state["step"] < total_steps:  # --max-minutes ran out: the same command goes on from the checkpoint
        final["stopped"] = f"--max-minutes {args.max_minutes} after step {state['step']} of {total_steps}"
        accelerator.print(f"stopped by --max-minutes at step {state['step']} of {total_steps}; the head so far is "
                          f"written, and running the same command again continues the schedule")
    if val:
        final["val"] = evaluate(raw_head, val, args.batch_tokens, steps=args.unroll, featurize=featurize)
        if args.draft_vocab:
            in_vocab = torch.zeros(raw_head.config.vocab_size, dtype=torch.bool)
            in_vocab[raw_head.draft_to_target.cpu()] = True
            answers = torch.cat([s["input_ids"][s["loss_mask"]] for s in val])
            final["val"]["draft_vocab_coverage"] = float(in_vocab[answers].float().mean())
    log(final)
    if accelerator.is_main_process:
        raw_head.save_pretrained(out_dir / "head")
        (out_dir / "head" / "training_args.json").write_text(json.dumps(vars(args), indent=1, default=str))
    return out_dir / "head"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf-specdec train", description="Train an FSPAD / EAGLE-2 draft head on target features.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", help="folder written by `hf-specdec features`")
    source.add_argument("--samples", nargs="+", help="JSONL(s) written by `hf-specdec distill`: features on the fly")
    p.add_argument("--max-length", type=int, default=2048, help="with --samples: cut samples to this many tokens")
    p.add_argument("--feature-dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                   help="with --samples: the target's dtype for features (as `hf-specdec features --dtype`)")
    p.add_argument("--out", required=True, help="run folder: checkpoints/, metrics.jsonl, head/ (the trained head)")
    p.add_argument("--model", default=None, help="the target (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--variant", default=None, choices=["fspad", "eagle2", "fs-only", "pad-only"],
                   help="the head to train (default: fspad, or with --init the continued head's own)")
    p.add_argument("--draft-vocab", type=int, default=None, help="score only the N most frequent tokens")
    p.add_argument("--init", default=None, help="start from this trained head (its variant; its draft vocabulary, or with --draft-vocab N the N most frequent of its draft tokens)")
    p.add_argument("--extra-layers", type=int, default=None,
                   help="decoder layers after the head's first, on the logit half (FSPADConfig.num_extra_layers); "
                        "with --init, a continued head grows to this many, the new ones starting as no-ops")
    p.add_argument("--extra-layers-lr", type=float, default=None,
                   help="learning rate of the extra decoder layers (default: --lr); the cosine schedule scales both")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (overrides --epochs)")
    p.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per batch")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip", type=float, default=0.5, help="gradient clipping by value (the paper's 0.5)")
    p.add_argument("--logit-weight", type=float, default=0.1, help="weight of ploss (the paper's 0.1)")
    p.add_argument("--topk-weight", type=float, default=0.0,
                   help="weight of a top-K distillation term (losses.topk_distillation_loss); 0: off")
    p.add_argument("--topk", type=int, default=10, help="K of the top-K distillation term")
    p.add_argument("--unroll", type=int, default=1, help="multi-step training: run the head this many steps "
                   "per batch, step j >= 2 on its own features (training/multistep.py); 1 is single-step training")
    p.add_argument("--unroll-top-k", type=int, default=0,
                   help="GRIFFIN's masking: step j >= 2 trains a position only where the earlier steps ranked the "
                        "true tokens of its chain in their top K (chains a tree would hold); 0: every position")
    p.add_argument("--unroll-decay", type=float, default=0.8, help="weight decay^(j-1) of step j's loss")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16", "fp16"])
    p.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is present")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop after this many minutes of this run: checkpoint, write the head so far (the same "
                        "command continues the schedule later; on a lent GPU machine, a time-boxed run)")
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restart", action="store_true", help="ignore existing checkpoints in --out")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    head_dir = train(args)
    print(f"trained head saved to {head_dir}")
    return 0


def held_back_sums(head_dirs, groups: dict[str, list[dict]], batch_tokens: int, steps: int, target, tokenizer,
                   featurize=None, check=None, int8: bool = False):
    """`evaluation_sums` of each saved head on each group of held-back samples (features stored, or added by
    `featurize`), a head at a time: yields (head_dir, {group: sums}). `check(head)`, when given, vets a head
    before it runs; `int8`: the heads run on int8 weights, as strategy="fspad" runs them on a CPU
    (`DraftHead.int8_weights`)."""
    from ..draft import FSPADDraftModel

    for head_dir in head_dirs:
        head = FSPADDraftModel.from_pretrained(head_dir).float()
        if check is not None:
            check(head)
        head.attach_target(target, tokenizer)
        head.int8_weights = int8
        yield str(head_dir), {name: evaluation_sums(head, val, batch_tokens, steps=steps, featurize=featurize)
                              for name, val in groups.items()}


def held_back_accuracy(head_dirs, val: list[dict], batch_tokens: int, steps: int, target, tokenizer,
                       featurize=None, check=None) -> dict:
    """`evaluate` of each saved head on the held-back samples `val`. {head_dir: evaluate(...)}"""
    return {head_dir: evaluation_means(sums["val"]) for head_dir, sums in
            held_back_sums(head_dirs, {"val": val}, batch_tokens, steps, target, tokenizer, featurize, check)}


def evaluate_heads(head_dirs, features=None, val_fraction=0.05, batch_tokens=4096, model=None, target=None,
                   tokenizer=None, steps: int = 1, samples=None, max_length: int = 2048,
                   feature_dtype: str = "bfloat16") -> dict:
    """Held-back accuracy of saved heads on one validation split, so that heads trained on different data (or
    budgets) are compared on the same positions: the split of a feature folder (`features`), or of distilled
    sample files (`samples`, features computed on the fly as `train --samples` does). {head_dir: evaluate(...)}"""
    from .prepare import DTYPES, load_target

    if (features is None) == (samples is None):
        raise ValueError("evaluate_heads takes a feature folder (features=) or sample files (samples=), one of them.")
    manifest = read_manifest(features) if features is not None else {"adapter": None}
    if target is None:
        target, tokenizer = load_target(model, DTYPES["float32"], manifest.get("adapter"))
    held = load_samples(features) if features is not None else token_samples(samples, max_length)
    val = [s for s in held if is_validation(s["id"], val_fraction)]
    if not val:
        raise ValueError(f"{features or ' '.join(map(str, samples))} has no held-back samples at --val-fraction {val_fraction}.")
    if features is not None:
        return held_back_accuracy(head_dirs, val, batch_tokens, steps, target, tokenizer,
                                  check=lambda head: check_features_match(manifest, head, features))
    return held_back_accuracy(head_dirs, val, batch_tokens, steps, target, tokenizer,
                              featurize=OnTheFlyFeatures(target, DTYPES[feature_dtype], remember=len(head_dirs) > 1))


def row_name(path: str, paths: list[str]) -> str:
    """A file's row in `evaluate --samples`: its name, or the path as given where another file has that name
    (run/a/responses.jsonl and run/b/responses.jsonl are two rows, not one)."""
    name = Path(path).name
    return name if sum(Path(other).name == name for other in paths) == 1 else str(path)


def evaluate_main(argv=None):
    p = argparse.ArgumentParser(prog="hf-specdec evaluate",
                                description="Top-1 / top-3 of saved heads on the held-back split of a feature folder "
                                            "or of sample files, and their acceptance under sampling at T=1 "
                                            "(the target's probability of the drafted tokens).")
    p.add_argument("heads", nargs="+", help="head folders (a trained run's head/, an export, a shipped head)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", help="folder written by `hf-specdec features`")
    source.add_argument("--samples", nargs="+", help="JSONL(s) written by `hf-specdec distill`: features on the "
                        "fly, and a row per file besides the one for all of them")
    p.add_argument("--max-length", type=int, default=2048, help="with --samples: cut samples to this many tokens")
    p.add_argument("--model", default=None, help="the target (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="the split `hf-specdec train` held back")
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--steps", type=int, default=3, help="also the top-1 of steps 2..N, fed the head's own features")
    p.add_argument("--int8", action="store_true", help="with --samples: the heads on int8 weights, as "
                   "strategy='fspad' runs them on a CPU by default (draft_int8)")
    args = p.parse_args(argv)
    if args.int8 and args.features:
        p.error("--int8 is for --samples (evaluate with --features reads stored features; give the sample files).")
    later = range(2, args.steps + 1)
    columns = (["top-1", "top-3"] + [f"top-1 step {j}" for j in later]
               + ["T=1 accept top-1", "T=1 accept top-4", "head's p(top-1)"] + [f"T=1 accept step {j}" for j in later]
               + [f"tau, chain of {args.steps}", f"tau, 4-ary tree of {args.steps}"])
    print("| head | data | " + "".join(f"{c} | " for c in columns) + "positions |")
    print("|---|---|" + "---|" * len(columns) + "---|")

    keys = (["top1", "top3"] + [f"top1_step{j}" for j in later] + ["accept1", "accept4", "confidence1"]
            + [f"accept1_step{j}" for j in later])

    def report(head_dir, name, r):
        print(f"| {head_dir} | {name} | " + "".join(f"{r[k]:.1%} | " for k in keys)
              + f"{1 + r['chain1']:.3f} | {1 + r['chain4']:.3f} | {r['tokens']:,} |", flush=True)

    if args.features:
        for head_dir, r in evaluate_heads(args.heads, args.features, args.val_fraction, args.batch_tokens,
                                          model=args.model, steps=args.steps).items():
            report(head_dir, "all", r)
        return 0
    from .prepare import DTYPES, load_target

    # Each file read and each head run once, per file; the row for all files adds the files' sums.
    val_of = {row_name(path, args.samples): [s for s in token_samples([path], args.max_length)
                                             if is_validation(s["id"], args.val_fraction)] for path in args.samples}
    if not any(val_of.values()):
        p.error(f"{' '.join(args.samples)} hold no held-back samples at --val-fraction {args.val_fraction}.")
    empty = [name for name, val in val_of.items() if not val]
    for name in empty:
        print(f"| | {name} | no held-back samples at --val-fraction {args.val_fraction} |")
    groups = {name: val for name, val in val_of.items() if val}
    target, tokenizer = load_target(args.model, DTYPES["float32"])
    featurize = OnTheFlyFeatures(target, DTYPES["bfloat16"], remember=True)  # every head sees the same batches
    for head_dir, sums in held_back_sums(args.heads, groups, args.batch_tokens, args.steps, target, tokenizer, featurize,
                                         int8=args.int8):
        rows = {"all": add_sums(list(sums.values()))}
        if len(args.samples) > 1:
            rows.update(sums)
        for name, row in rows.items():
            report(head_dir, name, evaluation_means(row))
    return 0
