"""Draft trees: their structure, EAGLE-2 growth, attention masks and KV-cache compaction."""

from .cache import check_compactable, compact_cache, crop_cache
from .growth import grow_sampled_tree, grow_tree
from .masks import tree_attention_mask, tree_position_ids
from .structure import DraftTree, SampledDraftTree

__all__ = [
    "DraftTree",
    "grow_tree",
    "grow_sampled_tree",
    "SampledDraftTree",
    "tree_attention_mask",
    "tree_position_ids",
    "check_compactable",
    "compact_cache",
    "crop_cache",
]
