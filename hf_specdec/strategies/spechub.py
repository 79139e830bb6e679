"""strategy="spechub": multi-draft speculative sampling over trees of sampled children.

The draft (an FSPAD head or an ordinary small causal LM over the target's vocabulary) grows a tree whose
children are *sampled* from its distribution q (temperature / top-k / top-p as for the target): two per node
by default, drawn with the verifier's draft law. The target verifies the tree in one forward and each node on
the way down is resolved with the chosen rule (hf_specdec/multidraft.py): SpecHub (default), or the
recursive-rejection baselines RRS (i.i.d. drafts) and RRSw (drafts without replacement). The output is
distributed exactly as stock sampling `generate`.
"""

from __future__ import annotations

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    MinPLogitsWarper,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from ..draft.base import DraftHead, weights_fixed
from ..multidraft import VERIFIERS
from ..prepacked import check_prepack, prepacked_linears
from ..tree import grow_sampled_tree, grow_sampled_trees
from ..verification import verify_multidraft
from .common import SpecDecodeStats, check_tree_numbers
from .drafters import CausalLMDrafter, HeadDrafter, check_draft_lm
from .batched import RowsWithoutState, check_batch_options, run_batched_tree_decoding
from .engine import open_request, run_tree_decoding

# Binary trees (SpecHub's draft law puts two children on a node); full depth 3 = 15 tokens verified per
# forward, root included, the paper's mid-size tree.
DEFAULT_DRAFTS_PER_NODE = 2
DEFAULT_DEPTH = 3


def full_tree_size(width: int, depth: int) -> int:
    """Nodes of a full tree, root included: 1 + w + ... + w^depth."""
    return sum(width**d for d in range(depth + 1))


# Warpers that only reshape a distribution (no context): the draft's logits go through the request's too.
CONTEXT_FREE_WARPERS = (
    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper,
    TypicalLogitsWarper, EpsilonLogitsWarper, EtaLogitsWarper,
)


def draft_warpers(logits_processor: LogitsProcessorList) -> LogitsProcessorList:
    """The request's sampling warpers (temperature, top-k, top-p, ...), taken from the very processors stock
    generate built for the target: the closer the draft's q is to the target's processed p, the more children
    are accepted. (q may be anything without losing exactness; only acceptance depends on it.)"""
    return LogitsProcessorList(w for w in logits_processor if isinstance(w, CONTEXT_FREE_WARPERS))


@torch.no_grad()
def spechub_generate(
    model,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    draft_model=None,
    streamer=None,
    tokenizer=None,
    verifier: str = "spechub",
    drafts_per_node: int = DEFAULT_DRAFTS_PER_NODE,
    tree_depth: int = DEFAULT_DEPTH,
    tree_total_tokens: int | None = None,
    prepack_target: bool | None = None,
    synced_gpus: bool = False,
    **model_kwargs,
):
    """Multi-draft speculative sampling. `model.generate(ids, assistant_model=draft, strategy="spechub",
    do_sample=True, ...)` with `verifier="spechub" | "rrs" | "rrsw"`, `drafts_per_node` (children per
    expanded node), `tree_depth` and `tree_total_tokens` (node budget, root included; default: the full
    tree). `prepack_target`: the target's linear layers on prepacked weights, as for strategy="fspad"
    (hf_specdec/prepacked.py; default: on for a CPU target whose copy stays within 4 GiB)."""
    if not generation_config.do_sample:
        raise ValueError(
            "strategy='spechub' is a sampling method: pass do_sample=True (with temperature / top_p / top_k). "
            "For greedy decoding use strategy='fspad', which is token-identical to stock greedy generate."
        )
    if verifier not in VERIFIERS:
        raise ValueError(f"Unknown verifier {verifier!r}; choose one of {', '.join(VERIFIERS)}.")
    check_tree_numbers(drafts_per_node=drafts_per_node, tree_depth=tree_depth)
    width, depth = drafts_per_node, tree_depth
    total = full_tree_size(width, depth) if tree_total_tokens is None else tree_total_tokens
    check_tree_numbers(tree_total_tokens=total)
    if draft_model is None:
        raise ValueError(
            "strategy='spechub' needs a draft: pass assistant_model= an FSPAD head (e.g. "
            "hf_specdec.default_draft(model, tokenizer)) or a small causal LM with the target's tokenizer."
        )
    if input_ids.dim() == 2 and input_ids.shape[0] > 1 and not isinstance(draft_model, DraftHead):
        raise NotImplementedError(
            f"strategy='spechub' decodes a batch ({input_ids.shape[0]} rows) with a draft head (FSPAD / EAGLE); a "
            f"draft LM ({type(draft_model).__name__}) takes batch size 1: call generate once per prompt."
        )
    cache, padding, prompt = open_request("spechub", model, input_ids, generation_config, synced_gpus, model_kwargs,
                                          draft=draft_model, batched=isinstance(draft_model, DraftHead))
    prepack = check_prepack(model, prepack_target)
    stats = SpecDecodeStats()
    if isinstance(draft_model, DraftHead):
        draft_model.attach_target(model, tokenizer=tokenizer)
        drafter = HeadDrafter(draft_model, stats)
        to_target = draft_model.scatter_to_target
    else:
        check_draft_lm(draft_model, model, "spechub")
        drafter = CausalLMDrafter(draft_model, stats)
        to_target = None
    rule = VERIFIERS[verifier]
    warpers = draft_warpers(logits_processor)

    def draft_probs(log_probs):
        q = warpers(None, log_probs.float()).softmax(-1)
        return q if to_target is None else to_target(q)

    def grow(committed, draft_state, cached):
        log_probs, feature = draft_state
        return grow_sampled_tree(drafter.expand(cached), draft_probs, rule.sample, committed[:, -1], log_probs, feature,
                                 width, depth, total, rule.distinct)

    def verify(tree, scores):
        return verify_multidraft(tree, scores.softmax(-1), rule)

    if padding is None:
        check_batch_options("spechub", generation_config, streamer)

        def grow_rows(committed, draft_state, slots):
            log_probs, feature = draft_state
            roots = torch.cat([c[:, -1] for c in committed])
            return grow_sampled_trees(drafter.expand(slots), draft_probs, rule.sample, roots, log_probs, feature,
                                      width, depth, total, rule.distinct)

        with prepacked_linears(model, prepack), weights_fixed():
            return run_batched_tree_decoding(model, input_ids, prompt, cache, drafter, RowsWithoutState(grow_rows),
                                             verify, logits_processor, stopping_criteria, generation_config, stats)
    with prepacked_linears(model, prepack), weights_fixed():
        return run_tree_decoding(model, prompt, padding, cache, drafter, grow, verify, logits_processor,
                                 stopping_criteria, generation_config, streamer, stats)
