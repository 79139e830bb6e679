"""strategy="fspad": tree speculative decoding with an FSPAD (or EAGLE-2) draft head.

The engine (strategies/engine.py) runs the cycle; this strategy grows EAGLE-2 trees with the head (top-k
children of the best frontier nodes, kept by cumulative draft log-probability) and verifies them with the
greedy rule, or with recursive rejection over the deterministic children when sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from ..draft import FSPADDraftModel
from ..lookup import SuffixIndex, lookup_trie
from ..tree import CostCurve, DraftTree, best_tree_size, expansion_pays, graft, grow_tree, prune_tree
from ..verification import verify_greedy, verify_sampling
from .common import SpecDecodeStats, check_tree_numbers
from .calibration import cost_curve_for
from .drafters import HeadDrafter
from .engine import open_request, run_tree_decoding, target_forward  # noqa: F401  (target_forward: re-export)

# Measured on the 2-core CPU with SmolLM2-135M in bf16 (see README, "Tree shape"): a verification forward of
# 16 tokens costs ~1.25x one token there, while the GPU default of 60 tokens costs ~3x.
DEFAULT_TREE = {"tree_top_k": 4, "tree_depth": 4, "tree_total_tokens": 16}
# The most nodes lookup drafts (hf_specdec.lookup) add to a cycle's tree; measured (README, "Lookup drafts").
DEFAULT_LOOKUP_TOKENS = 8
LOOKUP_MATCHES = 8  # occurrences of the matched suffix whose continuations are merged
# lookup_mode="choose" (SAM-Decoding style): a suffix match at least this long drafts the cycle alone.
CHOOSE_MIN_MATCH = 3
# Cost-sized trees (no tree shape given to generate): the head grows at most this deep and keeps at most this
# many candidates (root included); the cost model picks how deep it drafts and how many nodes are verified.
AUTO_MAX_DEPTH = 6
AUTO_MAX_NODES = 32


@dataclass(frozen=True)
class TreeShape:
    """EAGLE-2 dynamic tree parameters: children per expanded node, draft depth, node budget (root included)."""

    top_k: int
    depth: int
    total_tokens: int

    lookup_tokens: int = DEFAULT_LOOKUP_TOKENS

    @classmethod
    def resolve(cls, head: FSPADDraftModel, **given) -> "TreeShape":
        """Generate kwargs win, then the head's generation_config, then the defaults."""
        head_config = getattr(head, "generation_config", None)
        values = {}
        for name, default in {**DEFAULT_TREE, "lookup_tokens": DEFAULT_LOOKUP_TOKENS}.items():
            value = given.get(name)
            if value is None and head_config is not None:
                value = getattr(head_config, name, None)
            values[name] = default if value is None else value
        lookup = values.pop("lookup_tokens")
        if not isinstance(lookup, int) or isinstance(lookup, bool) or lookup < 0:
            raise ValueError(f"lookup_tokens must be a non-negative integer (0 turns lookup drafts off), got {lookup!r}.")
        check_tree_numbers(**values)
        return cls(values["tree_top_k"], values["tree_depth"], values["tree_total_tokens"], lookup)


@torch.no_grad()
def fspad_generate(
    model,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    draft_model: FSPADDraftModel | None = None,
    streamer=None,
    tokenizer=None,
    tree_top_k: int | None = None,
    tree_depth: int | None = None,
    tree_total_tokens: int | None = None,
    lookup_tokens: int | None = None,
    cost_curve: CostCurve | None = None,
    lookup_mode: str = "merge",
    synced_gpus: bool = False,
    **model_kwargs,
):
    """Tree speculative decoding. Usable as `model.generate(..., strategy="fspad", assistant_model=head)`
    after `import hf_specdec`, or without the hook as `model.generate(..., custom_generate=fspad_generate,
    draft_model=head)`. `lookup_tokens`: the most nodes that lookup drafts (continuations copied from the
    prompt and the output so far) add to each cycle's tree; 0 turns them off. `lookup_mode`: "merge" (lookup
    and head nodes in one tree) or "choose" (a long suffix match drafts the cycle alone, without head steps;
    else the head alone), kept for the comparison in the README.

    Without tree_top_k / tree_depth / tree_total_tokens the tree is sized each cycle by this machine's costs
    (tree/sizing.py; the curve is measured once and cached, or given as `cost_curve`): drafting stops when
    another head step cannot pay for itself, and the nodes verified are the count that maximises expected
    tokens per second (down to a plain decoding step). A tree shape given to generate means a fixed tree."""
    head = draft_model
    if head is None:
        raise ValueError(
            "strategy='fspad' needs a draft head: pass assistant_model=FSPADDraftModel.from_pretrained(...) "
            "(or FSPADDraftModel.from_target(model) for an untrained one)."
        )
    if not isinstance(head, FSPADDraftModel):
        raise TypeError(
            f"strategy='fspad' needs an FSPADDraftModel as assistant_model, got {type(head).__name__}. "
            "For an ordinary small draft LM use strategy='spechub' (sampling) or stock assisted generation (no strategy=)."
        )
    cache, padding, prompt = open_request("fspad", model, input_ids, generation_config, synced_gpus, model_kwargs,
                                          draft=head)
    shape = TreeShape.resolve(head, tree_top_k=tree_top_k, tree_depth=tree_depth, tree_total_tokens=tree_total_tokens,
                              lookup_tokens=lookup_tokens)
    head.attach_target(model, tokenizer=tokenizer)
    stats = SpecDecodeStats()
    drafter = HeadDrafter(head, stats)
    draft_to_target = head.draft_to_target if head.config.draft_vocab_size is not None else None

    if lookup_mode not in ("merge", "choose"):
        raise ValueError(f"lookup_mode must be 'merge' or 'choose', got {lookup_mode!r}.")
    index = SuffixIndex()
    sized = tree_top_k is None and tree_depth is None and tree_total_tokens is None
    if sized:
        curve = cost_curve if cost_curve is not None else cost_curve_for(model, head)
        depth, total = AUTO_MAX_DEPTH, AUTO_MAX_NODES
    else:
        depth, total = shape.depth, shape.total_tokens

    def grow(committed, draft_state, cached):
        log_probs, feature = draft_state
        trie = None
        if shape.lookup_tokens:
            index.extend(committed[0, len(index.tokens):].tolist())
            trie = lookup_trie(index, depth=shape.lookup_tokens, max_matches=LOOKUP_MATCHES)
        should_expand = None
        if sized:
            lookup_best = sorted(trie.estimates, reverse=True)[: shape.lookup_tokens] if trie else []

            def should_expand(level, candidate_scores, frontier_scores):
                # head steps so far: the catch-up and level - 1 expansions
                spent = curve.overhead_ms + level * curve.head_step_ms
                head_best = candidate_scores[0].topk(min(total - 1, candidate_scores.shape[1])).values.exp().tolist()
                return expansion_pays(sorted(head_best + lookup_best, reverse=True),
                                      frontier_scores[0].exp().tolist(), curve, spent)

        steps_before = stats.draft_forwards
        if lookup_mode == "choose" and trie is not None and trie.match_length >= CHOOSE_MIN_MATCH:
            root = DraftTree.from_parents(committed[:, -1:], committed.new_full((1, 1), -1),
                                          torch.ones(1, 1, device=committed.device))
            tree = graft(root, trie.tokens, trie.parents, trie.estimates, shape.lookup_tokens)
        else:
            tree = grow_tree(drafter.expand(cached), committed[:, -1], log_probs, feature, shape.top_k, depth,
                             total, draft_to_target, should_expand)
            if trie is not None and lookup_mode == "merge":
                tree = graft(tree, trie.tokens, trie.parents, trie.estimates, shape.lookup_tokens)
        if sized:  # the catch-up and the expansions of this cycle are spent; choose how much to verify
            spent = curve.overhead_ms + (1 + stats.draft_forwards - steps_before) * curve.head_step_ms
            keep, _ = best_tree_size(sorted(tree.estimates[0, 1:].tolist(), reverse=True), curve, spent)
            tree = prune_tree(tree, keep)
        return tree

    def verify(tree, scores):
        if generation_config.do_sample:
            return verify_sampling(tree, scores.softmax(-1))
        return verify_greedy(tree, scores)

    return run_tree_decoding(model, prompt, padding, cache, drafter, grow, verify, logits_processor,
                             stopping_criteria, generation_config, streamer, stats)
