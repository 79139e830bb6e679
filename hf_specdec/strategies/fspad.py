"""strategy="fspad": tree speculative decoding with an FSPAD (or EAGLE-2) draft head.

The engine (strategies/engine.py) runs the cycle; this strategy drafts each cycle's tree (`TreeDrafts`): the
head's EAGLE-2 tree (top-k children of the best frontier nodes, kept by cumulative draft log-probability),
lookup drafts copied from the text so far grafted onto it, and -- unless generate was given a tree shape --
the tree's depth and size chosen by this machine's measured costs. It verifies with the greedy rule, or with
recursive rejection over the deterministic children when sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from ..draft.base import DraftHead, check_int8_weights, int8_weights, weights_fixed
from ..prepacked import check_prepack, prepacked_linears
from ..lookup import LOOKUP_CALIBRATION, LOOKUP_CALIBRATION_SAMPLING, LookupTrie, SuffixIndex, lookup_trie
from ..tree import CostCurve, DraftTree, EstimateCalibration, best_tree_size, expansion_pays, graft, grow_tree, prune_tree
from ..tree.sizing import batch_expansion_pays, best_batch_tree_size
from ..verification import expected_accepted, verify_greedy, verify_sampling
from .common import SpecDecodeStats, check_tree_numbers
from .calibration import cost_curve_for
from .batched import check_batch_options, run_batched_tree_decoding
from .drafters import DeferredHeadDrafter, HeadDrafter, PendingCatchUp
from .head_gate import HeadGate
from .engine import open_request, run_tree_decoding, target_forward  # noqa: F401  (target_forward: re-export)

# A fixed tree's shape where generate and the head's generation_config give none (tuned on the 2-core CPU with
# SmolLM2-135M in bf16, where 16 tree tokens verify for ~1.2-1.4x the cost of one).
DEFAULT_TREE = {"tree_top_k": 4, "tree_depth": 4, "tree_total_tokens": 16}
# The most nodes lookup drafts (hf_specdec.lookup) add to a cycle's tree; measured (README, "Lookup drafts").
DEFAULT_LOOKUP_TOKENS = 16
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
    def resolve(cls, head: DraftHead, **given) -> "TreeShape":
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


def head_estimate_calibration(head: DraftHead, given, sampling: bool) -> EstimateCalibration | None:
    """How the head's path probabilities map onto P(accepted) (tree/sizing.py): generate's
    `estimate_calibration` wins (an EstimateCalibration, or False for the raw path probabilities), then the
    head's generation_config `estimate_calibration` ({"greedy": {"x": [...], "y": [...]}, "sampling": ...},
    written by `hf-specdec calibrate-lookup --head`), for greedy decoding or sampling; else none."""
    if given is False:
        return None
    if given is not None:
        if not isinstance(given, EstimateCalibration):
            raise TypeError("estimate_calibration must be an hf_specdec.tree.EstimateCalibration, False (the head's "
                            f"raw path probabilities) or None (the head's own), got {type(given).__name__}.")
        return given
    stored = getattr(getattr(head, "generation_config", None), "estimate_calibration", None)
    mode = "sampling" if sampling else "greedy"
    if not stored or mode not in stored:
        return None
    try:
        return EstimateCalibration.from_dict(stored[mode])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"the head's generation_config has an unusable estimate_calibration[{mode!r}]: {err}") from None


def check_lookup_calibration(rates) -> dict[int, tuple[float, float]] | None:
    """generate's `lookup_calibration`: None, or {n: (a_n, g_n)} with integer bucket floors n >= 1 (1 among them)
    and rates in [0, 1]."""
    if rates is None:
        return None
    try:
        table = {int(n): (float(a), float(g)) for n, (a, g) in rates.items()}
        ok = all(int(n) == n for n in rates) and 1 in table and all(
            n >= 1 and 0 <= a <= 1 and 0 <= g <= 1 for n, (a, g) in table.items())
    except (AttributeError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError("lookup_calibration must map match-length bucket floors (integers >= 1, 1 among them) to "
                         f"rate pairs (a_n, g_n) in [0, 1], like hf_specdec.lookup.LOOKUP_CALIBRATION; got {rates!r}.")
    return table


class TreeDrafts:
    """The tree of one cycle: `grow(committed [1, T], draft_state, cached) -> DraftTree` (the engine's callback).

    With a cost curve the head drafts up to AUTO_MAX_DEPTH / AUTO_MAX_NODES while another step can pay, and
    the tree is pruned to the size with the best expected tokens per ms (tree/sizing.py); without one it is
    the fixed `shape`. Lookup nodes (up to shape.lookup_tokens) are grafted onto the head's tree ("merge"), or
    draft a cycle alone when the suffix match is long ("choose")."""

    def __init__(self, drafter: HeadDrafter, shape: TreeShape, curve: CostCurve | None, lookup_mode: str,
                 draft_to_target: torch.Tensor | None, sampling: bool = False,
                 head_calibration: EstimateCalibration | None = None, gate: HeadGate | None = None,
                 lookup_calibration: dict[int, tuple[float, float]] | None = None):
        self.drafter, self.shape, self.curve, self.lookup_mode = drafter, shape, curve, lookup_mode
        self.draft_to_target = draft_to_target
        self.head_calibration = head_calibration
        # with a gate (cost-sized trees, a DeferredHeadDrafter), a cycle may draft without the head
        if gate is not None and curve is None:
            raise ValueError("a head gate prices the head with a cost curve: give TreeDrafts the curve, or no gate")
        self.gate = gate
        self.last_cycle: tuple | None = None  # (committed length, trie, head cost in ms) of a cycle that ran the head
        # a lookup node is accepted less often when the target samples (with its draw probability) than when it
        # takes its argmax: each has its own calibration
        self.calibration = lookup_calibration or (LOOKUP_CALIBRATION_SAMPLING if sampling else LOOKUP_CALIBRATION)
        self.depth, self.total = (AUTO_MAX_DEPTH, AUTO_MAX_NODES) if curve is not None else (shape.depth, shape.total_tokens)
        self.index = SuffixIndex()

    def __call__(self, committed: torch.Tensor, draft_state, cached: int) -> DraftTree:
        trie = self.lookup(committed) if self.shape.lookup_tokens else None
        steps_before = self.drafter.stats.draft_forwards
        # a catch-up run before this call (not a PendingCatchUp) is spent already
        steps_before -= not isinstance(draft_state, PendingCatchUp)
        curve = None if self.curve is None else self.curve.at(cached)  # this cycle's context
        run_head, lookup_only = True, (1, 0.0)
        if self.gate is not None:
            self.observe_last_cycle(committed)
            lookup_best = sorted(trie.estimates, reverse=True)[: self.shape.lookup_tokens] if trie else []
            lookup_only = best_tree_size(lookup_best, curve, curve.overhead_ms)  # (size, rate) without the head
            run_head = self.gate.run_head(lookup_only[1])
        if not run_head or (self.lookup_mode == "choose" and trie is not None and trie.match_length >= CHOOSE_MIN_MATCH):
            tree = DraftTree.from_parents(committed[:, -1:], committed.new_full((1, 1), -1),
                                          torch.ones(1, 1, device=committed.device))
            tree = self.graft(tree, trie) if trie is not None else tree
        else:
            if isinstance(draft_state, PendingCatchUp):
                draft_state = draft_state()
            tree = self.head_tree(committed[:, -1], draft_state, cached, trie, curve)
            if trie is not None and self.lookup_mode == "merge":
                tree = self.graft(tree, trie)
        if curve is None:
            return tree
        # the catch-up and this cycle's expansions are spent; verify the size that pays best
        head_steps = self.drafter.stats.draft_forwards - steps_before
        keep, _ = best_tree_size(sorted(tree.estimates[0, 1:].tolist(), reverse=True), curve,
                                 self.spent_ms(curve, head_steps))
        if self.gate is not None and run_head:
            head_ms = head_steps * curve.head_step_ms + curve.verify(keep) - curve.verify(lookup_only[0])
            self.last_cycle = (committed.shape[1], trie, head_ms)
        return prune_tree(tree, keep)

    def observe_last_cycle(self, committed: torch.Tensor) -> None:
        """Tell the gate what the head added in the last cycle, if it ran: the accepted draft tokens (the tokens
        committed since, less the target's own last one) beyond the path the lookup trie held."""
        if self.last_cycle is None:
            return
        length, trie, head_ms = self.last_cycle
        accepted = committed[0, length:-1].tolist()
        self.gate.observe(len(accepted) - (trie.path_length(accepted) if trie is not None else 0), head_ms)
        self.last_cycle = None

    def lookup(self, committed: torch.Tensor, index: SuffixIndex | None = None) -> LookupTrie:
        index = self.index if index is None else index
        index.extend(committed[0, len(index.tokens):].tolist())
        return lookup_trie(index, depth=self.shape.lookup_tokens, max_matches=LOOKUP_MATCHES,
                           calibration=self.calibration)

    def graft(self, tree: DraftTree, trie: LookupTrie) -> DraftTree:
        return graft(tree, trie.tokens, trie.parents, trie.estimates, self.shape.lookup_tokens)

    @staticmethod
    def spent_ms(curve: CostCurve, head_steps: int) -> float:
        return curve.overhead_ms + head_steps * curve.head_step_ms

    def calibrated(self, path_probs: torch.Tensor) -> torch.Tensor:
        """The head's path probabilities as P(accepted) estimates."""
        return path_probs if self.head_calibration is None else self.head_calibration(path_probs)

    def calibrated_tree(self, tree: DraftTree) -> DraftTree:
        return tree if self.head_calibration is None else replace(tree, estimates=self.head_calibration(tree.estimates))

    def head_tree(self, root: torch.Tensor, draft_state, cached: int, trie: LookupTrie | None,
                  curve: CostCurve | None) -> DraftTree:
        """The head's EAGLE-2 tree; with `curve` (the cost curve at this cycle's context), grown only while
        another level can pay."""
        log_probs, feature = draft_state
        should_expand = None
        if curve is not None:
            lookup_best = sorted(trie.estimates, reverse=True)[: self.shape.lookup_tokens] if trie else []

            def should_expand(level, candidate_scores, frontier_scores):
                # before expansion `level`: the catch-up and level - 1 expansions are spent
                best = self.calibrated(candidate_scores[0].topk(min(self.total - 1, candidate_scores.shape[1])).values.exp())
                return expansion_pays(sorted(best.tolist() + lookup_best, reverse=True),
                                      self.calibrated(frontier_scores[0].exp()).tolist(), curve,
                                      self.spent_ms(curve, level))

        return self.calibrated_tree(grow_tree(self.drafter.expand(cached), root, log_probs, feature, self.shape.top_k,
                                              self.depth, self.total, self.draft_to_target, should_expand))


class BatchTreeDrafts:
    """The trees of one cycle for a batch (strategies/batched.py's `grow`): one EAGLE-2 growth for all rows (a
    head forward per level), then each row's own lookup drafts grafted on; with a cost curve, the growth stops
    when another level cannot pay for the batch, and every row keeps the same number of nodes, the count with
    the best expected tokens per ms for the whole batch (`best_batch_tree_size`): trees shrink as B grows."""

    def __init__(self, drafts: TreeDrafts, batch_size: int):
        self.drafts = drafts
        self.indexes = [SuffixIndex() for _ in range(batch_size)]

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.indexes = [self.indexes[i] for i in rows.tolist()]

    @staticmethod
    def head_step_ms(curve: CostCurve, batch_size: int, k: int) -> float:
        """A head step over B rows of k nodes costs what the target's curve says B times the tokens cost,
        relative to one row."""
        return curve.head_step_ms * curve.verify(batch_size * k) / curve.verify(k)

    def spent_ms(self, curve: CostCurve, head_steps: int, batch_size: int) -> float:
        """Host work grows with the rows (each is verified and emitted alone), head steps with the batch."""
        return batch_size * curve.overhead_ms + head_steps * self.head_step_ms(curve, batch_size, self.drafts.shape.top_k)

    def __call__(self, committed: list[torch.Tensor], draft_state, slots) -> list[DraftTree]:
        d = self.drafts
        B = len(committed)
        tries = [d.lookup(c, index) for c, index in zip(committed, self.indexes)] if d.shape.lookup_tokens else [None] * B
        steps_before = d.drafter.stats.draft_forwards
        log_probs, feature = draft_state
        should_expand = curve = None
        if d.curve is not None:
            # the batch's forward spans its longest row's context
            curve = d.curve.at(max(c.shape[1] for c in committed))
            lookup_best = [sorted(t.estimates, reverse=True)[: d.shape.lookup_tokens] if t else [] for t in tries]

            def should_expand(level, candidate_scores, frontier_scores):
                keep = min(d.total - 1, candidate_scores.shape[1])
                best = d.calibrated(candidate_scores.topk(keep).values.exp()).tolist()
                rows = [sorted(b + extra, reverse=True) for b, extra in zip(best, lookup_best)]
                return batch_expansion_pays(rows, d.calibrated(frontier_scores.exp()).tolist(), curve,
                                            self.spent_ms(curve, level, B), self.head_step_ms(curve, B, d.shape.top_k))

        roots = torch.cat([c[:, -1] for c in committed])
        tree = d.calibrated_tree(grow_tree(d.drafter.expand(slots), roots, log_probs, feature, d.shape.top_k, d.depth,
                                           d.total, d.draft_to_target, should_expand))
        trees = [tree.row(b) for b in range(B)]
        trees = [d.graft(t, trie) if trie is not None else t for t, trie in zip(trees, tries)]
        if curve is None:
            return trees
        spent = self.spent_ms(curve, 1 + d.drafter.stats.draft_forwards - steps_before, B)
        rows = [sorted(t.estimates[0, 1:].tolist(), reverse=True) for t in trees]
        keep, _ = best_batch_tree_size(rows, curve, spent)
        return [prune_tree(t, keep) for t in trees]


@torch.no_grad()
def fspad_generate(
    model,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    draft_model: DraftHead | None = None,
    streamer=None,
    tokenizer=None,
    tree_top_k: int | None = None,
    tree_depth: int | None = None,
    tree_total_tokens: int | None = None,
    lookup_tokens: int | None = None,
    cost_curve: CostCurve | None = None,
    estimate_calibration: EstimateCalibration | bool | None = None,
    lookup_calibration: dict[int, tuple[float, float]] | None = None,
    lookup_mode: str = "merge",
    head_gate: bool = False,
    track_expected_tau: bool = False,
    draft_int8: bool | None = None,
    prepack_target: bool | None = None,
    synced_gpus: bool = False,
    **model_kwargs,
):
    """Tree speculative decoding. Usable as `model.generate(..., strategy="fspad", assistant_model=head)`
    after `import hf_specdec`, or without the hook as `model.generate(..., custom_generate=fspad_generate,
    draft_model=head)`. `lookup_tokens`: the most nodes that lookup drafts (continuations copied from the
    prompt and the output so far) add to each cycle's tree; 0 turns them off. `lookup_mode`: "merge" (lookup
    and head nodes in one tree) or "choose" (a long suffix match drafts the cycle alone, without head steps;
    else the head alone), kept for the comparison in the README. `estimate_calibration`: how the head's path
    probabilities map onto P(accepted) for the sizing and against lookup nodes (`head_estimate_calibration`;
    default: the head's own, if its generation_config has one; False: the raw path probabilities).
    `lookup_calibration`: the lookup nodes' acceptance rates, {match length bucket floor n: (a_n, g_n)}
    (hf_specdec.lookup; default: the measured LOOKUP_CALIBRATION, or LOOKUP_CALIBRATION_SAMPLING when sampling).
    `head_gate=True`: with cost-sized trees and one row, a cycle may draft without the head (lookup drafts
    alone, or a plain decoding step) while the head's recent drafts did not pay for it
    (strategies/head_gate.py). Off by default: on held-out prompts it measured no faster than running the
    head every cycle (README, "Skipping a head that does not pay"). `track_expected_tau=True` (sampling, one
    row): `spec_stats.expected_lengths` gets each cycle's expected tokens under the sampling rule
    (`verification.expected_accepted`), a tau without the noise of the draws, for comparing drafts at T > 0
    (`hf-specdec bench` reports it); it costs a softmax normaliser over the tree's scores per cycle.
    `draft_int8`: the head drafts from weight-only int8 copies of its weights and of its draft rows of the
    target's lm_head (`DraftHead.int8_weights`): a head step reads half the bytes, and the outputs are those of
    exact drafts (verification is exact); default: the head's generation_config `draft_int8`, else on for a head
    on the CPU (`default_int8_weights`); True on another device is an error. `prepack_target`: the target's
    linear layers compute from weights oneDNN reordered once (hf_specdec/prepacked.py), which on the CPU makes
    its forwards 15-40% cheaper; bf16 outputs are unchanged bit for bit, and the copy is kept beside the model
    (its linear weights once more); default: on for a CPU target whose copy stays within 4 GiB.

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
    if not isinstance(head, DraftHead):
        raise TypeError(
            f"strategy='fspad' needs a draft head as assistant_model (FSPADDraftModel, Eagle3DraftModel, or "
            f"hf_specdec.load_draft(path) for EAGLE heads), got {type(head).__name__}. For an ordinary small draft "
            "LM use strategy='spechub' (sampling) or stock assisted generation (no strategy=)."
        )
    cache, padding, prompt = open_request("fspad", model, input_ids, generation_config, synced_gpus, model_kwargs,
                                          draft=head, batched=True)
    batched = padding is None
    if batched:
        check_batch_options("fspad", generation_config, streamer)
        if lookup_mode == "choose":
            raise NotImplementedError("lookup_mode='choose' drafts one row at a time; a batch takes lookup_mode='merge'.")
    shape = TreeShape.resolve(head, tree_top_k=tree_top_k, tree_depth=tree_depth, tree_total_tokens=tree_total_tokens,
                              lookup_tokens=lookup_tokens)
    head.attach_target(model, tokenizer=tokenizer)
    if lookup_mode not in ("merge", "choose"):
        raise ValueError(f"lookup_mode must be 'merge' or 'choose', got {lookup_mode!r}.")
    if not isinstance(head_gate, bool):
        raise TypeError(f"head_gate must be True or False, got {head_gate!r}.")
    sized = tree_top_k is None and tree_depth is None and tree_total_tokens is None
    if head_gate and not sized:
        raise ValueError("head_gate=True prices the head with the cost curve of cost-sized trees; drop tree_top_k / "
                         "tree_depth / tree_total_tokens, or head_gate.")
    if head_gate and batched:
        raise NotImplementedError("head_gate=True decodes one row at a time; a batch runs the head every cycle.")
    if not isinstance(track_expected_tau, bool):
        raise TypeError(f"track_expected_tau must be True or False, got {track_expected_tau!r}.")
    if track_expected_tau and not generation_config.do_sample:
        raise ValueError("track_expected_tau=True is for sampling (do_sample=True): a greedy cycle's accepted count "
                         "has no randomness to average out, so its tau is already the expected one.")
    if track_expected_tau and batched:
        raise NotImplementedError("track_expected_tau=True tracks one row; call generate once per prompt.")
    int8 = check_int8_weights(head, draft_int8)
    prepack = check_prepack(model, prepack_target)
    stats = SpecDecodeStats(expected_lengths=[] if track_expected_tau else None)
    drafter = (DeferredHeadDrafter if head_gate else HeadDrafter)(head, stats)
    draft_to_target = head.draft_to_target if head.config.draft_vocab_size is not None else None
    curve = (cost_curve if cost_curve is not None else cost_curve_for(model, head, int8=int8, prepack=prepack)) if sized else None
    sampling = bool(generation_config.do_sample)
    grow = TreeDrafts(drafter, shape, curve, lookup_mode, draft_to_target, sampling=sampling,
                      head_calibration=head_estimate_calibration(head, estimate_calibration, sampling),
                      gate=HeadGate() if head_gate else None, lookup_calibration=check_lookup_calibration(lookup_calibration))

    def verify(tree, scores):
        if generation_config.do_sample:
            if track_expected_tau:
                stats.expected_lengths.append(1.0 + float(expected_accepted(tree, scores)[0]))
            return verify_sampling(tree, scores)
        return verify_greedy(tree, scores)

    with int8_weights(head, int8), weights_fixed(), prepacked_linears(model, prepack):
        if batched:
            return run_batched_tree_decoding(model, input_ids, prompt, cache, drafter,
                                             BatchTreeDrafts(grow, len(input_ids)), verify, logits_processor,
                                             stopping_criteria, generation_config, stats)
        return run_tree_decoding(model, prompt, padding, cache, drafter, grow, verify, logits_processor,
                                 stopping_criteria, generation_config, streamer, stats)
