"""Draft trees: their structure, EAGLE-2 growth, attention masks (and the tree attention implementation) and
KV-cache compaction."""

from .attention import (
    TREE_ATTENTION,
    check_tree_attention,
    register_tree_attention,
    tree_attention_for,
    tree_mask_builder,
    tree_mask_for,
)
from .cache import GrowingCache, check_compactable, compact_cache, crop_cache
from .growth import grow_sampled_tree, grow_sampled_trees, grow_tree
from .merge import graft
from .sizing import (CostCurve, EstimateCalibration, best_tree_size, expansion_pays, fit_cycle_costs, head_pays, prune_tree,
                     refit_curve)
from .masks import pack_tree_mask, tree_attention_mask, tree_position_ids
from .structure import DraftTree, SampledDraftTree

__all__ = [
    "DraftTree",
    "grow_tree",
    "grow_sampled_tree",
    "grow_sampled_trees",
    "graft",
    "CostCurve",
    "EstimateCalibration",
    "best_tree_size",
    "expansion_pays",
    "fit_cycle_costs",
    "refit_curve",
    "head_pays",
    "prune_tree",
    "SampledDraftTree",
    "tree_attention_mask",
    "pack_tree_mask",
    "tree_mask_builder",
    "tree_mask_for",
    "tree_attention_for",
    "check_tree_attention",
    "TREE_ATTENTION",
    "register_tree_attention",
    "tree_position_ids",
    "check_compactable",
    "GrowingCache",
    "compact_cache",
    "crop_cache",
]
