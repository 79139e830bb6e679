"""Triton kernels for the hot paths of tree speculative decoding (installed as `hf_specdec_kernels`).

Each kernel comes with a thin launcher that takes and returns torch tensors; the torch references they must
agree with live in `hf_specdec` (tree/masks.py, verification.py, tree/cache.py), which also decides when the
kernels run (`hf_specdec.accel`). This package imports only torch and triton.

    tree_attention      attention of tree queries over a cached prefix plus the tree, mask from ancestor bits
    greedy_tree_walk    the accepted path of a draft tree under greedy verification, per batch row
    compact_kv          move the accepted path's K/V next to the prefix, all layers in one launch, in place

Importing needs triton; on a machine without a GPU set TRITON_INTERPRET=1 *before* the import to run the
kernels in Triton's interpreter (how the tests run them on CPU).
"""

from .compact import compact_kv
from .tree_attention import tree_attention
from .tree_walk import greedy_tree_walk

__all__ = ["compact_kv", "greedy_tree_walk", "tree_attention"]
