"""Linear layers on oneDNN-prepacked weights, on the CPU.

`F.linear` on the CPU hands the weight to oneDNN (bf16) or MKL (float32) in its plain layout, and the library
reorders it into its blocked layout on every call. For the few rows a decoding step multiplies, that reorder
costs about as much as the product or more: reading the weight twice, writing it once. torch keeps a weight
reordered once (`torch.ops.mkldnn._reorder_linear_weight`, what torch.compile's CPU freezing uses) and
multiplies by it directly (`torch.ops.mkldnn._linear_pointwise`). Measured on the 2-core AVX-512 EPYC
(2026-12-07, `python examples/time_head_step.py --packing`, SmolLM2's weights): a whole target forward over
16 tree tokens bf16 57.4 -> 43.5 ms, float32 105.8 -> 61.1 ms; one token 42.7 -> 35.9 and 64.2 -> 46.5 ms.

Values: in bf16 the same oneDNN kernel computes them, so they are F.linear's bit for bit (tested); in float32
oneDNN sums in another order than MKL, a difference of float32 rounding, as between a one-token and a
multi-token forward. Memory: the prepacked copy is kept beside the weight (the model's own tensors are not
touched), one more copy of every packed layer's weight.

    packing_serves(weight)              whether a weight is worth packing here
    pack(weight) / packed_linear(...)   the two torch ops
    prepacked_linears(model)            a block in which the model's plain nn.Linear layers run prepacked
    check_prepack(model, given)         generate's `prepack_target`: None (the default), True or False
"""

from __future__ import annotations

import functools
import logging
import threading
from contextlib import contextmanager

import torch
from torch import nn

logger = logging.getLogger(__name__)

PACK_WEIGHTS = True  # off: every product as F.linear computes it (an A/B switch; part of the cost curves' key)
# The smallest weight worth packing: a prepacked call costs ~18 us however small the weight, F.linear ~6 us for
# a [128, 64] one; they meet near 256 x 256 (4 rows, warm, 2 threads: 18.4 / 20.2 us in float32, 32.0 / 20.9
# in bf16; 576 x 576: 73 / 35 and 57 / 27 us).
PACK_MIN_ELEMENTS = 1 << 17
BATCH_HINT = 8  # the row count oneDNN is told to expect (any count is served; a decoding step's order)
# generate packs a target by default only while the copy it keeps is at most this large (a 1B model in bf16 is
# ~2 GiB of linear weights); prepack_target=True packs any size.
PREPACK_DEFAULT_MAX_BYTES = 4 << 30


def packing_serves(weight: torch.Tensor) -> bool:
    """On the CPU, in float32 or bfloat16, at least PACK_MIN_ELEMENTS, in a torch built with oneDNN."""
    return (PACK_WEIGHTS and weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
            and weight.numel() >= PACK_MIN_ELEMENTS and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def pack(weight: torch.Tensor) -> torch.Tensor:
    """W [N, K] reordered once into oneDNN's layout (an opaque tensor for `packed_linear` only)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), BATCH_HINT)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x W^T + b for x [..., K] with W packed by `pack`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def is_plain(module: nn.Module, kind: type = nn.Linear) -> bool:
    """Whether calling `module` runs exactly `kind.forward` and nothing else: an instance of `kind` itself (not a
    PEFT LoRA layer or another subclass), with no hooks of its own or global ones and no forward patched onto the
    instance (accelerate's hooks do that). Only then may a head step skip the module call, or a
    block give it a forward on prepacked weights."""
    hooks = nn.modules.module
    return (type(module) is kind and "forward" not in module.__dict__
            and not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                     or module._backward_pre_hooks)
            and not (hooks._global_forward_hooks or hooks._global_forward_pre_hooks
                     or hooks._global_backward_hooks or hooks._global_backward_pre_hooks))


def inference_only() -> bool:
    """Whether products may run on prepared copies of their weights (prepacked here, int8 in a draft head): no
    gradients recorded (the prepared products have no backward) and no autocast region on the CPU or a CUDA device
    (autocast casts each op's inputs and weights, which a prepared product bypasses: a bf16 input against a packed
    float32 weight fails in oneDNN)."""
    return not (torch.is_grad_enabled() or torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"))


@functools.lru_cache(maxsize=None)
def _log_autocast(name: str) -> None:
    logger.warning("hf_specdec: %s's linear layers are not prepacked inside an autocast region (the packed product "
                   "does not autocast); they run as they are.", name)


def _packed_forward(module: nn.Linear):
    """The layer's packed copy, made anew when its weight changed (storage or version), and a forward on it. The
    kept entry holds the packed weight's storage too, so that its address cannot come back under other values
    (a weight replaced twice) and pass for it."""
    weight = module.weight
    key = (weight.data_ptr(), weight._version, weight.dtype)
    kept = module.__dict__.get("_prepacked")
    if kept is None or kept[0] != key:
        kept = module.__dict__["_prepacked"] = (key, pack(weight), weight.detach())
    packed, bias = kept[1], module.bias
    return lambda x: packed_linear(x, packed, bias)


_switching = threading.Lock()


@contextmanager
def prepacked_linears(model: nn.Module, enabled: bool = True):
    """For the block, the model's plain nn.Linear layers whose weight `packing_serves` compute their forward
    from a prepacked copy of it (kept on the layer, and made again only after the weight changed). The layers'
    forwards are restored afterwards. Nothing changes with gradients on or inside autocast (`inference_only`; the
    latter said once), or where nothing serves. A layer already switched by an enclosing block is left to it."""
    switched = []
    if enabled and PACK_WEIGHTS and not torch.is_grad_enabled():
        if not inference_only():  # autocast
            _log_autocast(type(model).__name__)
        else:
            with _switching:
                for module in model.modules():
                    if is_plain(module) and packing_serves(module.weight):
                        module.forward = _packed_forward(module)
                        switched.append(module)
    try:
        yield switched
    finally:
        with _switching:
            for module in switched:
                module.__dict__.pop("forward", None)


def packable_bytes(model: nn.Module) -> int:
    """The bytes `prepacked_linears(model)` would keep: the weights of its layers that it switches."""
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
               if is_plain(m) and packing_serves(m.weight))


@functools.lru_cache(maxsize=None)
def _log_decision(name: str, mib: int, on: bool) -> None:
    if on:
        logger.warning("hf_specdec: %s's linear layers run on prepacked weights while decoding (a copy of %d MiB is "
                       "kept beside them; prepack_target=False turns it off).", name, mib)
    else:
        logger.warning("hf_specdec: %s's linear layers are not prepacked by default: the copy would take %d MiB "
                       "(more than %d MiB); prepack_target=True packs them.", name, mib, PREPACK_DEFAULT_MAX_BYTES >> 20)


def check_prepack(model: nn.Module, given) -> bool:
    """generate's `prepack_target`: True / False, or None: on where some layer serves and the copy stays within
    PREPACK_DEFAULT_MAX_BYTES (either way said once per model class and size)."""
    if given is not None and not isinstance(given, bool):
        raise TypeError(f"prepack_target must be True, False or None (on for a CPU model within "
                        f"{PREPACK_DEFAULT_MAX_BYTES >> 30} GiB of linear weights), got {given!r}.")
    if given is False or not PACK_WEIGHTS:
        return False
    size = packable_bytes(model)
    if size == 0:
        return False
    on = given is True or size <= PREPACK_DEFAULT_MAX_BYTES
    _log_decision(type(model).__name__, size >> 20, on)
    return on
