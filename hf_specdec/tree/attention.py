"""Tree attention as a transformers attention implementation ("hf_specdec_tree").

Registered with `AttentionInterface` (and `AttentionMaskInterface`, with sdpa's mask builder), so any model
built on transformers' attention functions can use it: `from_pretrained(..., attn_implementation=
"hf_specdec_tree")` or `model.set_attn_implementation("hf_specdec_tree")`. Given a packed tree mask
(tree/masks.py) it runs tree attention -- the Triton kernel where `hf_specdec.accel` says the kernels serve,
else the torch reference; given anything else (prefill, ordinary decoding) it is sdpa.

The tree strategies pass packed masks to models that use this implementation (`tree_mask_for`), and switch
models to it for the length of a `generate` call when the kernels serve their device (`tree_attention_for`).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..accel import get_kernel_mode, kernels, kernels_serve
from .masks import is_packed_tree_mask, pack_tree_mask, tree_attention_mask, unpack_tree_mask

logger = logging.getLogger(__name__)

TREE_ATTENTION = "hf_specdec_tree"


def tree_attention_reference(query, key, value, packed_mask, scaling=None) -> torch.Tensor:
    """Torch tree attention: sdpa with the unpacked mask. query [B, H, q, D], key/value [B, H_kv, kv, D];
    returns [B, q, H, D]."""
    visible = unpack_tree_mask(packed_mask, key.shape[2])
    groups = query.shape[1] // key.shape[1]
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1), attn_mask=visible, scale=scaling
    )
    return out.transpose(1, 2)


def tree_attention(query, key, value, packed_mask, scaling=None) -> torch.Tensor:
    """Tree attention by the kernel or the torch reference (see hf_specdec.accel)."""
    if kernels_serve(query.device):
        return kernels().tree_attention(query, key, value, packed_mask, scaling)
    return tree_attention_reference(query, key, value, packed_mask, scaling)


def tree_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The registered attention function (transformers' signature)."""
    if not is_packed_tree_mask(attention_mask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    unsupported = [name for name in ("softcap", "sliding_window") if kwargs.get(name) is not None]
    if dropout or unsupported or kwargs.get("output_attentions"):
        raise NotImplementedError(
            f"{TREE_ATTENTION} attention does not support {', '.join(unsupported) or 'dropout / output_attentions'} "
            f"(layer {type(module).__name__}); use attn_implementation='sdpa' for this model."
        )
    return tree_attention(query, key, value, attention_mask, scaling), None


# sdpa that keeps grouped key / value heads grouped under a mask, on the CPU (`grouped_sdpa_attention_forward`).
GROUPED_SDPA = "hf_specdec_sdpa"


def grouped_sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' sdpa, except that under a 4D mask on the CPU the key / value heads that several query heads
    share stay shared (sdpa's enable_gqa) instead of being copied once per query head (repeat_kv).

    transformers copies them whenever a mask is given because CUDA's fused kernels take no mask with grouped
    heads; the CPU's fused kernel does, with the same result bit for bit, and a tree verification always has a
    mask. The copy is the whole cache, every layer, every cycle: for SmolLM2 (9 query heads on 3 key / value
    heads) 5% of a 16-token verification at 256 cached tokens and 7% at 1,000 (examples/bench_grouped_sdpa.py).
    Everything else (no mask, one query, other devices, softcap, position bias) is transformers' sdpa as it is."""
    groups = getattr(module, "num_key_value_groups", 1)
    plain = (groups == 1 or attention_mask is None or query.shape[2] == 1 or query.device.type != "cpu"
             or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None
             or kwargs.get("output_attentions"))
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def register_tree_attention() -> None:
    AttentionInterface.register(TREE_ATTENTION, tree_attention_forward)
    AttentionMaskInterface.register(TREE_ATTENTION, sdpa_mask)
    AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_attention_forward)
    AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)


# The attention implementations that apply a 4D mask as given. A tree mask is no padding mask: flash-attention
# variants read a mask as padding (wrong attention or a crash), and flex_attention crashed the process on a
# dense 4D mask (torch 2.13, CPU).
TREE_MASK_IMPLEMENTATIONS = ("sdpa", "eager", TREE_ATTENTION, GROUPED_SDPA)


def check_tree_attention(model) -> None:
    """Raise unless `model`'s attention implementation can take a tree mask (objects without a transformers
    config are left to the strategies' own type checks)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl is None:
        return
    if impl not in TREE_MASK_IMPLEMENTATIONS:
        raise ValueError(
            "Tree speculative decoding (strategy='fspad' / 'spechub') attends with a 4D tree mask, which "
            f"attn_implementation={impl!r} of {type(model).__name__} cannot take. Use one of "
            f"{', '.join(map(repr, TREE_MASK_IMPLEMENTATIONS))}: load it with attn_implementation='sdpa' or call "
            "model.set_attn_implementation('sdpa')."
        )


def tree_mask_builder(model):
    """`tree_mask_for` bound to `model`'s attention implementation and dtype as they are now: a function
    (ancestors, prefix_len) -> mask, for a loop that builds masks while neither changes (one generate call,
    inside `tree_attention_for`), without reading the config and the parameters' dtype for every mask (a few
    microseconds each, several times per cycle)."""
    if model.config._attn_implementation == TREE_ATTENTION:
        return pack_tree_mask
    dtype = model.dtype
    return lambda ancestors, prefix_len: tree_attention_mask(ancestors, prefix_len, dtype)


def tree_mask_for(model, ancestors: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """The tree mask in the form `model`'s attention implementation takes: packed for tree attention, dense
    additive otherwise."""
    return tree_mask_builder(model)(ancestors, prefix_len)


# Models switched to tree attention by tree_attention_for, with (the implementation to restore, the calls
# inside): concurrent generate calls on one model switch it once and restore it when the last one leaves.
_SWITCHED: dict[int, list] = {}
_SWITCH_LOCK = threading.Lock()


def _switch_to(model, tree_kernel: bool) -> str | None:
    """The implementation `model` decodes a tree with, or None to keep its own."""
    current = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if current is None or not hasattr(model, "set_attn_implementation"):
        return None
    if kernels_serve(model.device):
        if not tree_kernel or current == TREE_ATTENTION:
            return None
        if current != "sdpa" and get_kernel_mode() != "triton":
            logger.info("%s keeps attn_implementation=%r: the tree attention kernel replaces sdpa only "
                        "(force it with HF_SPECDEC_KERNELS=triton).", type(model).__name__, current)
            return None
        return TREE_ATTENTION
    return GROUPED_SDPA if current == "sdpa" and model.device.type == "cpu" else None


@contextmanager
def tree_attention_for(*models, tree_kernel: bool = True):
    """For the block, switch the models on devices that the kernels serve from sdpa to tree attention (with the
    kernel mode forced to "triton", from any implementation; not with `tree_kernel=False`, for callers whose
    masks are dense), and models on the CPU from sdpa to `GROUPED_SDPA` (the same values, without copying
    grouped key / value heads); restore them when the last block using them ends."""
    entered = []
    try:
        with _SWITCH_LOCK:
            for model in models:
                entry = _SWITCHED.get(id(model))
                if entry is None and (target := _switch_to(model, tree_kernel)) is not None:
                    entry = _SWITCHED[id(model)] = [model.config._attn_implementation, 0]
                    model.set_attn_implementation(target)
                if entry is not None:
                    entry[1] += 1
                    entered.append(model)
        yield
    finally:
        with _SWITCH_LOCK:
            for model in entered:
                entry = _SWITCHED[id(model)]
                entry[1] -= 1
                if entry[1] == 0:
                    del _SWITCHED[id(model)]
                    model.set_attn_implementation(entry[0])
