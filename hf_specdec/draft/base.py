"""What every draft head shares: the target modules it borrows, the pairing checks, strict checkpoint loading
and the tree defaults saved in its generation_config. FSPADDraftModel and Eagle3DraftModel build on it."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import GenerationConfig, PreTrainedModel
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRMSNorm, eager_attention_forward

from ..prepacked import inference_only, is_plain, pack, packed_linear, packing_serves  # noqa: F401  (is_plain: re-export)

logger = logging.getLogger(__name__)

_FINGERPRINT_ROWS = 16
_FINGERPRINT_RTOL = 2e-2  # bf16 rounding moves a row norm by ~0.4%; another model moves it by far more


def embedding_fingerprint(embedding_weight: torch.Tensor) -> list[float]:
    """Norms of a fixed spread of embedding rows: identifies a target's vocabulary/embedding whatever its dtype."""
    rows = torch.linspace(0, embedding_weight.shape[0] - 1, _FINGERPRINT_ROWS).long()
    norms = embedding_weight.detach()[rows.to(embedding_weight.device)].float().norm(dim=-1)
    return [float(f"{v:.6g}") for v in norms.tolist()]


def same_fingerprint(a: list[float], b: list[float]) -> bool:
    """Whether two embedding fingerprints come from the same embeddings (up to dtype rounding)."""
    return torch.allclose(torch.tensor(a), torch.tensor(b), rtol=_FINGERPRINT_RTOL, atol=1e-6)


def tokenizer_hash(tokenizer) -> str:
    """A short hash of the tokenizer's vocabulary (token -> id)."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _log_follow(dtype, device, target_dtype, target_device) -> None:
    logger.warning("hf_specdec: the draft head (%s on %s) follows its target to %s on %s.", dtype, device,
                   target_dtype, target_device)


def check_loading_info(info: dict, source, model_name: str = "the head") -> None:
    """Raise when from_pretrained's loading report lists tensors the head lacks, does not know, or cannot take."""
    problems = []
    for key, what in (("missing_keys", "missing"), ("unexpected_keys", "unexpected"),
                      ("mismatched_keys", "of the wrong shape")):
        names = sorted(str(k if isinstance(k, str) else k[0]) for k in info.get(key) or ())
        if names:
            problems.append(f"{what}: {', '.join(names)}")
    if problems:
        raise ValueError(
            f"The draft head checkpoint at {source} does not match {model_name} ({'; '.join(problems)}). A "
            f"partly loaded head would draft with random weights. Check that the folder holds a complete head saved "
            f"by {model_name}.save_pretrained (heads in the EAGLE / EAGLE-3 layouts load with hf_specdec.load_draft)."
        )


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """[-s1, s2]: sin with its first half negated (see `rotate_query_key`)."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def rotate_query_key(query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     sin_signed: torch.Tensor | None = None):
    """The rotary embedding, as transformers' apply_rotary_pos_emb computes it: x cos + rotate_half(x) sin with
    rotate_half(x) = [-x2, x1]. Here [-x2, x1] sin = roll(x) [-s1, s2] (x rolled by half the head dimension, the
    sign moved onto sin, once for query and key): the same products, bit for bit (a sign commutes exactly), in
    fewer operations. query / key [B, heads, q, D]; cos / sin [B, q, D]; `sin_signed`, when the caller has it
    (the head's rotary table keeps it), is `signed_sin(sin)`."""
    half = cos.shape[-1] // 2
    cos, sin_signed = cos[:, None], (signed_sin(sin) if sin_signed is None else sin_signed)[:, None]
    return (query * cos + query.roll(half, -1) * sin_signed, key * cos + key.roll(half, -1) * sin_signed)


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight-only int8 of W [N, K], one scale per output row n:

        s_n = max_k |W_nk| / 127 (in W's dtype, rounded up),   Q_nk = round(W_nk / s_n),

    so Q_nk lies in [-127, 127] and |W_nk - s_n Q_nk| <= s_n / 2 (tested). A row of zeros gets s_n = 1.
    Returns (Q int8 [N, K], s [N] in W's dtype)."""
    w = weight.detach().float()
    peak = w.abs().amax(dim=1)
    scales = (peak / 127).to(weight.dtype)
    short = scales.float() * 127 < peak  # rounded down to the dtype: one step up, so no |W / s| exceeds 127
    scales = torch.where(short, torch.nextafter(scales, torch.full_like(scales, float("inf"))), scales)
    scales = torch.where(peak > 0, scales, torch.ones_like(scales))
    return torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8), scales


def int8_serves(weight: torch.Tensor) -> bool:
    """Whether torch's weight-only int8 product (`aten._weight_int8pack_mm`) serves W [N, K]: on the CPU, in
    float32 / float16 / bfloat16, and in bfloat16 only with K a multiple of 16 (torch 2.13's bf16 kernel returns
    garbage, or crashes, for other K)."""
    return (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and (weight.dtype != torch.bfloat16 or weight.shape[1] % 16 == 0)
            and hasattr(torch.ops.aten, "_weight_int8pack_mm"))


INT8_MAX_ROWS = 8  # beyond ~4-8 rows the int8 kernel loses to a dense product (`examples/time_head_step.py --int8`)


class Product:
    """x -> x W^T + b over weights prepared once for decoding: W as it is, or weight-only int8 (`scales` set:
    W' = diag(scales) Q, `int8_rows`). A head step multiplies a handful of tokens by every weight it has, so on a
    CPU its time is the time to read them, and Q is half of bf16's bytes (a quarter of float32's). Torch's int8
    kernel is slower than a dense product beyond a few rows, and far slower for many, so an x of more than
    INT8_MAX_ROWS rows (a prompt's catch-up, an evaluation batch) is multiplied by a dense copy of W' (in the
    scales' dtype, made on first need): the same W' either way.

    A dense product runs on a prepacked copy of W (or W') where that serves (hf_specdec/prepacked.py): F.linear
    reorders the weight on every call, which for a few rows costs more than the product (SmolLM2's 16k draft
    rows of the lm_head, 4 rows, cold: bf16 1.40 -> 0.77 ms, float32 6.0 -> 1.2 ms). In bf16 the values are
    F.linear's bit for bit (tested); in float32 they differ from F.linear's in the last bits."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, scales: torch.Tensor | None = None):
        self.weight, self.bias, self.scales = weight, bias, scales
        self._dense = None  # (W or W', its packed copy or None), made on first need

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        if self._dense is None:
            w = self.weight if self.scales is None else (
                self.weight.float() * self.scales.float()[:, None]).to(self.scales.dtype)
            self._dense = (w, pack(w) if packing_serves(w) else None)
        w, packed = self._dense
        return F.linear(x, w, self.bias) if packed is None else packed_linear(x, packed, self.bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.scales is None or x.numel() > INT8_MAX_ROWS * x.shape[-1]:
            return self.dense(x)
        out = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), self.weight, self.scales)
        out = out.view(*x.shape[:-1], out.shape[-1])
        return out if self.bias is None else out + self.bias


@functools.lru_cache(maxsize=None)
def _log_unquantized(shape, dtype, device_type) -> None:
    logger.warning("hf_specdec: a %s %s product on %s stays unquantized (torch's int8 product does not serve it: CPU "
                   "only, and bf16 needs K a multiple of 16).", shape, dtype, device_type)


def decoding_product(owner: nn.Module, name: str, params: tuple[tuple[torch.Tensor, torch.Tensor | None], ...],
                     int8: bool = False, source: tuple[torch.Tensor, ...] | None = None) -> Product:
    """The `Product` of the weights `params` ((weight, bias) pairs) stacked along their outputs, so that one
    product computes all of them (each output is its own row's dot product: the same values as each alone;
    tested), in int8 with `int8` where `int8_serves` (else as they are, logged once). Cached on `owner` under
    `name` until a weight changes: its storage or version (an in-place update: an optimizer step,
    load_state_dict), or a `.to()` of the head (`DraftHead._apply` drops the cache); `source`, when given, names
    the tensors the weights were derived from, which identify them instead (a copy made anew per call would
    otherwise be prepared anew per call). Inside `weights_fixed` (one generate call) a product checked once in
    the block is not checked again: a head step calls a dozen, and each check reads two attributes per tensor."""
    cache = owner.__dict__.get("_stacked_linears")
    if cache is None:
        cache = owner.__dict__["_stacked_linears"] = {}
    cached = cache.get(name)
    block = fixed_weights_block()
    if cached is not None and block is not None and cached[2] is block and cached[0][0] == int8:
        return cached[1]
    tensors = source if source is not None else tuple(p for pair in params for p in pair if p is not None)
    key = (int8, *((p.data_ptr(), p._version) for p in tensors))
    if cached is not None and cached[0] == key:
        cached = cache[name] = (key, cached[1], block)
    else:
        weight = params[0][0] if len(params) == 1 else torch.cat([w for w, _ in params])
        bias = None if params[0][1] is None else (params[0][1] if len(params) == 1 else torch.cat([b for _, b in params]))
        weight, bias = weight.detach(), None if bias is None else bias.detach()
        if int8 and int8_serves(weight):
            q, scales = int8_rows(weight)
            product = Product(q, bias, scales)
        else:
            if int8:
                _log_unquantized(tuple(weight.shape), str(weight.dtype), weight.device.type)
            product = Product(weight, bias)
        cached = cache[name] = (key, product, block)
    return cached[1]


_fixed_weights = threading.local()  # .block: the innermost `weights_fixed` block of this thread, or None


def fixed_weights_block():
    """The innermost `weights_fixed` block of this thread (an object), or None outside one."""
    return getattr(_fixed_weights, "block", None)


@contextmanager
def weights_fixed():
    """A block in which no decoding weight changes (one generate call): `decoding_product` checks each product's
    weights once in it instead of on every call. Per thread; blocks nest."""
    previous = fixed_weights_block()
    _fixed_weights.block = object()
    try:
        yield
    finally:
        _fixed_weights.block = previous


def stacked_linear(owner: nn.Module, name: str, modules: tuple[nn.Module, ...], int8: bool = False) -> Product | None:
    """`decoding_product` of the projections `modules`, or None where that would change what runs: a module that
    is not a plain nn.Linear (`is_plain`: a PEFT layer, a hook), some with a bias and some without, or gradients
    being recorded (training calls the modules)."""
    if not inference_only() or not all(is_plain(m) for m in modules):
        return None
    if len({m.bias is None for m in modules}) > 1:
        return None
    return decoding_product(owner, name, tuple((m.weight, m.bias) for m in modules), int8)


def rms_normed(weight: torch.Tensor, eps: float, x: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm's forward, bit for bit (tested, float32 and bf16): x / sqrt(mean(x^2) + eps) in float32, cast
    back, times the weight; one fused call instead of LlamaRMSNorm's six (the casts are skipped in float32)."""
    if x.dtype == torch.float32:
        return weight * F.rms_norm(x, (x.shape[-1],), eps=eps)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def rms_norm(norm: LlamaRMSNorm, x: torch.Tensor) -> torch.Tensor:
    """What `norm(x)` computes (`rms_normed` on its weight and epsilon), for a head that runs its norms several
    times per cycle on a handful of tokens."""
    return rms_normed(norm.weight, norm.variance_epsilon, x)


class DecodingNorm:
    """`rms_norm(norm, x)` with the norm's weight and epsilon read once (`decoding_parts`)."""

    def __init__(self, norm: LlamaRMSNorm):
        self.weight, self.eps = norm.weight, norm.variance_epsilon

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return rms_normed(self.weight, self.eps, x)


def projection(module: nn.Module, int8: bool = False):
    """What a head step multiplies by for `module`: while decoding (`inference_only`), its `decoding_product`
    (prepacked where that serves, weight-only int8 with `int8`) where it is a plain nn.Linear (`is_plain`);
    otherwise the module itself, so hooks, adapters and autocast apply."""
    if is_plain(module) and inference_only():
        return decoding_product(module, "self", ((module.weight, module.bias),), int8=int8)
    return module


def norm_of(norm: nn.Module):
    """What a head step normalizes with for `norm`: while decoding (`inference_only`) a `DecodingNorm` where `norm`
    is a plain LlamaRMSNorm; otherwise `rms_norm` on the module (bit for bit its own forward)."""
    if is_plain(norm, LlamaRMSNorm) and inference_only():
        return DecodingNorm(norm)
    return functools.partial(rms_norm, norm)


def decoding_parts(owner: nn.Module, name: str, build, *key):
    """`build()` (what a head step multiplies by: `projection`s, `norm_of`s, `AttentionParts`), made once per
    `weights_fixed` block (one generate call) for the same `name` and `key` while decoding, and on every call
    otherwise. A head step would otherwise resolve a dozen modules, products and attributes per call, and a cycle
    runs four or more steps on a handful of tokens each, where that costs as much as the arithmetic
    (`hf-specdec overhead`)."""
    block = fixed_weights_block()
    if block is None or not inference_only():
        return build()
    memos = owner.__dict__.get("_decoding_parts")
    if memos is None:
        memos = owner.__dict__["_decoding_parts"] = {}
    memo = memos.get(name)
    if memo is None or memo[0] is not block or memo[1] != key:
        memo = memos[name] = (block, key, build())
    return memo[2]


@dataclass(frozen=True)
class AttentionParts:
    """What `head_attention` multiplies by and dispatches to. qkv: query, key and value stacked into one
    `decoding_product` (`stacked_linear`), or None: q, k, v called one by one (modules while training, or PEFT
    layers and hooks); o: the output projection; attention: the attention implementation's function."""

    q: object
    k: object
    v: object
    qkv: "Product | None"
    o: object
    attention: object
    head_dim: int
    kv_heads: int


def attention_parts(attn: nn.Module, int8: bool = False) -> AttentionParts:
    """The `AttentionParts` of a LlamaAttention-shaped module as it is now (its attention implementation, its
    projections), for decoding where gradients are off and nothing autocasts (see `projection`)."""
    D = attn.head_dim
    qkv = stacked_linear(attn, "qkv", (attn.q_proj, attn.k_proj, attn.v_proj), int8)
    q, k, v = (None, None, None) if qkv is not None else (projection(m, int8) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
    return AttentionParts(
        q=q, k=k, v=v, qkv=qkv, o=projection(attn.o_proj, int8),
        attention=ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager_attention_forward),
        head_dim=D, kv_heads=attn.k_proj.weight.shape[0] // D,
    )


def head_attention(attn: nn.Module, hidden_states: torch.Tensor, position_embeddings, attention_mask, cache,
                   is_causal: bool, int8: bool = False, parts: AttentionParts | None = None) -> torch.Tensor:
    """What `LlamaAttention.forward` computes, called on its projections directly: the same values, bit for bit
    (the rotary embedding by `rotate_query_key`; tested against LlamaAttention), dispatched to the same attention
    implementation (sdpa, eager, or our tree attention kernel), without the wrappers around
    LlamaAttention.forward. A head runs four or more times per cycle on a handful of tokens, where those wrappers
    cost about as much as the attention itself (`hf-specdec overhead`). While decoding (no gradients) with plain
    nn.Linear projections, query, key and value come from one product with their weights stacked
    (`stacked_linear`) and are rotated together; otherwise (training, PEFT adapters, hooks) the projections are
    called as modules, so hooks and adapters apply. `position_embeddings`: (cos, sin) or (cos, sin, signed sin).
    `int8`: the decoding products in weight-only int8 (`DraftHead.int8_weights`). `parts`: `attention_parts(attn,
    int8)`, where the caller keeps them (`decoding_parts`)."""
    p = parts if parts is not None else attention_parts(attn, int8)
    input_shape = hidden_states.shape[:-1]
    D = p.head_dim
    if p.qkv is not None:
        cos, sin, *rest = position_embeddings
        sin_signed = (rest[0] if rest else signed_sin(sin))[:, :, None]
        states = p.qkv(hidden_states).view(*input_shape, -1, D)  # [B, q, heads + 2 kv heads, D]
        rotated = states[..., : -p.kv_heads, :]
        rotated = rotated * cos[:, :, None] + rotated.roll(D // 2, -1) * sin_signed
        query, key = rotated[..., : -p.kv_heads, :].transpose(1, 2), rotated[..., -p.kv_heads :, :].transpose(1, 2)
        value = states[..., -p.kv_heads :, :].transpose(1, 2)
    else:
        hidden_shape = (*input_shape, -1, D)
        query = p.q(hidden_states).view(hidden_shape).transpose(1, 2)
        key = p.k(hidden_states).view(hidden_shape).transpose(1, 2)
        value = p.v(hidden_states).view(hidden_shape).transpose(1, 2)
        query, key = rotate_query_key(query, key, *position_embeddings)
    if cache is not None:
        key, value = cache.update(key, value, attn.layer_idx)
    out, _ = p.attention(attn, query, key, value, attention_mask,
                         dropout=attn.attention_dropout if attn.training else 0.0, scaling=attn.scaling,
                         is_causal=is_causal)
    return p.o(out.reshape(*input_shape, -1).contiguous())


@dataclass(frozen=True)
class MLPParts:
    """What `gated_mlp` multiplies by: gate and up stacked into one `decoding_product` while decoding (gate_up;
    None where they are called one by one: training, adapters, hooks), the down projection, the activation."""

    gate_up: "Product | None"
    gate: object
    up: object
    down: object
    act: object


def mlp_parts(owner: nn.Module, gate: nn.Module, up: nn.Module, down: nn.Module, act, int8: bool = False) -> MLPParts:
    """The `MLPParts` of a SwiGLU MLP as it is now (see `projection`, `stacked_linear`); the stacked product is
    kept on `owner`."""
    gate_up = stacked_linear(owner, "gate_up", (gate, up), int8)
    return MLPParts(gate_up=gate_up, gate=projection(gate, int8) if gate_up is None else None,
                    up=projection(up, int8) if gate_up is None else None, down=projection(down, int8), act=act)


def gated_mlp(p: MLPParts, x: torch.Tensor) -> torch.Tensor:
    """down(act(gate(x)) * up(x)), LlamaMLP's forward bit for bit (tested)."""
    gate, up = p.gate_up(x).chunk(2, dim=-1) if p.gate_up is not None else (p.gate(x), p.up(x))
    return p.down(p.act(gate) * up)


@dataclass(frozen=True)
class DecoderLayerParts:
    """What `decoder_layer_step` multiplies by and normalizes with for one LlamaDecoderLayer-shaped layer: its
    norms (`norm_of`), its attention's `AttentionParts` and its MLP's `MLPParts`."""

    input_norm: object
    attention: AttentionParts
    post_norm: object
    mlp: MLPParts


def decoder_layer_parts(layer: nn.Module, int8: bool = False) -> DecoderLayerParts:
    """The `DecoderLayerParts` of `layer` as it is now (see `projection`)."""
    mlp = layer.mlp
    return DecoderLayerParts(
        input_norm=norm_of(layer.input_layernorm), attention=attention_parts(layer.self_attn, int8),
        post_norm=norm_of(layer.post_attention_layernorm),
        mlp=mlp_parts(mlp, mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn, int8),
    )


def decoder_layer_step(layer: nn.Module, x: torch.Tensor, position_embeddings, attention_mask, cache, is_causal: bool,
                       parts: DecoderLayerParts | None = None) -> torch.Tensor:
    """What `layer(x, ...)` (a LlamaDecoderLayer) computes, on its parts directly (`head_attention`'s reasons):
    x + Attn(RMSNorm(x)), then + MLP(RMSNorm(.)). `parts`: `decoder_layer_parts(layer)`, where the caller
    keeps them (`decoding_parts`)."""
    p = parts if parts is not None else decoder_layer_parts(layer)
    a = x + head_attention(layer.self_attn, p.input_norm(x), position_embeddings, attention_mask, cache, is_causal,
                           parts=p.attention)
    return a + gated_mlp(p.mlp, p.post_norm(a))


DRAFT_INT8 = True  # strategy="fspad"'s default where it serves and pays; measured (README, "Int8 head weights")
# The head dtypes whose int8 step measured faster than the exact one on the CPU. bf16: a cold SmolLM2 head step
# 4.61 -> 3.25 ms; float32: 11.8 -> 31.7 ms, torch's float32-activation int8 kernel being far slower than its
# float32 GEMM (2026-12-07, before the head was prepacked; `hf-specdec calibrate --int8 on|off` prints it): a float32
# head drafts exact.
DRAFT_INT8_DTYPES = (torch.bfloat16,)


def default_int8_weights(head) -> bool:
    """Whether strategy="fspad" runs `head` with `DraftHead.int8_weights` when generate's `draft_int8` is not
    given: the head's generation_config `draft_int8` if it has one, else DRAFT_INT8; either only for a head on
    the CPU (where torch's int8 product serves, `int8_serves`) in a dtype where it measured faster
    (DRAFT_INT8_DTYPES). `draft_int8=True` asks for it in any CPU dtype."""
    stored = getattr(getattr(head, "generation_config", None), "draft_int8", None)
    return (bool(DRAFT_INT8 if stored is None else stored) and head.device.type == "cpu"
            and head.dtype in DRAFT_INT8_DTYPES)


def check_int8_weights(head, given) -> bool:
    """generate's `draft_int8`: None (the default, `default_int8_weights`), or True / False; True asks for
    what only a CPU head can do."""
    if given is None:
        return default_int8_weights(head)
    if not isinstance(given, bool):
        raise TypeError(f"draft_int8 must be True, False or None (the head's default), got {given!r}.")
    if given and head.device.type != "cpu":
        raise ValueError(f"draft_int8=True: torch's weight-only int8 product serves heads on the CPU, and this head "
                         f"is on {head.device}; pass draft_int8=False (or leave it unset).")
    return given


@contextmanager
def int8_weights(head, on: bool):
    """`head.int8_weights = on` for the length of a block (one generate call), then what it was."""
    previous = head.int8_weights
    head.int8_weights = on
    try:
        yield head
    finally:
        head.int8_weights = previous


@dataclass
class DraftOutput(ModelOutput):
    """hidden_states: what the logits are computed from [B, q, H]; features: what is fed back to the children
    [B, q, H]; cache: the head's KV cache, updated."""

    hidden_states: torch.Tensor | None = None
    features: torch.Tensor | None = None
    cache: object | None = None


@dataclass
class TargetParts:
    """The target modules a head borrows. A plain object, so nn.Module does not register (or save) them."""

    embed_tokens: nn.Module
    lm_head: nn.Module | None
    draft_lm_weight: torch.Tensor | None  # rows of lm_head for a reduced draft vocabulary


class DraftHead(PreTrainedModel):
    """Base of the draft heads. A subclass defines its layers, `forward` (-> DraftOutput), `compute_logits`,
    `feature_layers` (None: the target's last hidden state; else the target layers whose input hidden states
    it reads) and `_borrow(target)` (-> TargetParts)."""

    main_input_name = "input_ids"
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_attention_backend = True
    feature_layers: tuple[int, ...] | None = None
    # While decoding (no gradients), compute the head's projections and its draft logits from weight-only int8
    # copies of their weights (`decoding_product`): what the head proposes moves by the quantization error, what
    # generate outputs does not (verification is exact). strategy="fspad" sets it per call (its `draft_int8`).
    int8_weights: bool = False

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, LlamaRMSNorm):
            module.weight.data.fill_(1.0)
        else:  # e.g. the rotary embedding's inv_freq: a non-persistent buffer that from_pretrained must recompute
            super()._init_weights(module)

    def _apply(self, fn, *args, **kwargs):
        """`.to()`, `.half()`, ...: the weights stacked for decoding (`stacked_linear`) are built again from the
        converted ones (a freed storage's address can come back with other values under it)."""
        for module in self.modules():
            module.__dict__.pop("_stacked_linears", None)
            module.__dict__.pop("_decoding_parts", None)
            module.__dict__.pop("_rotary_table", None)
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------------------------ checkpoints
    # transformers keeps a generation_config only for models that generate; the head's carries the tree
    # shape it was tuned for (tree_top_k, tree_depth, tree_total_tokens), so save and load it explicitly.
    _HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "subfolder", "local_files_only")

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.generation_config is not None:
            self.generation_config.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loader, made strict: a checkpoint with missing, unexpected or mis-shaped tensors is an
        error naming them, not a partly random head that drafts at near-zero acceptance."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        check_loading_info(info, pretrained_model_name_or_path, cls.__name__)
        hub_kwargs = {k: kwargs[k] for k in cls._HUB_KWARGS if k in kwargs}
        try:
            model.generation_config = GenerationConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        except OSError:  # a head saved without tree defaults
            model.generation_config = None
        return (model, info) if want_info else model

    # ----------------------------------------------------------------------------------------- pairing
    def target_hidden_size(self) -> int:
        return self.config.hidden_size

    def target_mismatches(self, target: PreTrainedModel, tokenizer=None) -> list[str]:
        """What differs between the target this head was made for and `target` (empty when they match)."""
        c, tc = self.config, target.config.get_text_config(decoder=True)
        embed = target.get_input_embeddings().weight
        problems = []
        if tc.hidden_size != self.target_hidden_size():
            problems.append(f"hidden size: head {self.target_hidden_size()}, target {tc.hidden_size}")
        if embed.shape[0] != c.vocab_size:
            problems.append(f"vocabulary size: head {c.vocab_size}, target {embed.shape[0]}")
        if not problems and getattr(c, "target_fingerprint", None) is not None:
            if not same_fingerprint(embedding_fingerprint(embed), c.target_fingerprint):
                problems.append("embedding fingerprint: the target's token embeddings are not those the head was made for")
        if tokenizer is not None and getattr(c, "target_tokenizer_hash", None) is not None:
            if tokenizer_hash(tokenizer) != c.target_tokenizer_hash:
                problems.append("tokenizer: its vocabulary differs from the one the head was made for")
        return problems + self._layer_mismatches(tc)

    def _layer_mismatches(self, target_config) -> list[str]:
        return []

    def attach_target(self, target: PreTrainedModel, tokenizer=None):
        """Borrow the target's modules (after checking the head was made for this target)."""
        problems = self.target_mismatches(target, tokenizer)
        if problems:
            made_for = self.config.target_architecture or "another model"
            raise ValueError(
                f"This {type(self).__name__} head was made for {made_for} and does not match the target "
                f"{type(target).__name__}: " + "; ".join(problems) + ". Load the head trained for this target, or "
                "create one with FSPADDraftModel.from_target(target)."
            )
        self.follow(target.get_input_embeddings().weight)
        self._target = self._borrow(target)
        return self

    def _borrow(self, target) -> TargetParts:
        raise NotImplementedError

    def follow(self, weight: torch.Tensor) -> None:
        """Move the head to the dtype and device of the target's weights: it computes on the target's own
        embeddings (and lm_head), so a bf16 head beside a float32 target (one of them cast with .to()) is a
        mismatch of the user's setup, not a choice. Logged once per (from, to)."""
        mine = next(self.parameters())
        if (mine.dtype, mine.device) != (weight.dtype, weight.device):
            _log_follow(str(mine.dtype), str(mine.device), str(weight.dtype), str(weight.device))
            self.to(device=weight.device, dtype=weight.dtype)

    def _parts(self) -> TargetParts:
        if getattr(self, "_target", None) is None:
            raise RuntimeError("The head has no target attached: call head.attach_target(target) first.")
        return self._target

    # ----------------------------------------------------------------------------------------- compute
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The target's embeddings of `input_ids` (its module's own forward, called directly where plain)."""
        embed = self._parts().embed_tokens
        if is_plain(embed, nn.Embedding):
            return F.embedding(input_ids, embed.weight, embed.padding_idx, embed.max_norm, embed.norm_type,
                               embed.scale_grad_by_freq, embed.sparse)
        return embed(input_ids)

    def position_embeddings(self, h: torch.Tensor, position_ids: torch.Tensor, max_position: int | None = None):
        """(cos, sin) [B, q, D] of the rotary embedding at `position_ids`, in h's dtype. With `max_position`, a
        bound on the positions the caller knows without reading them (a drafter knows its cache length), they
        are looked up in a table of positions [0, n) the head's own rotary module computed once (grown by
        doubling), the same values bit for bit (tested): a few index ops instead of the dozen a rotary forward
        runs, on every head forward of every cycle; the table also keeps `signed_sin(sin)`, returned third, so
        the rotation need not build it each forward. Without it, the rotary module runs on the positions."""
        if max_position is None:
            return self.rotary_emb(h, position_ids)
        table, block = self.__dict__.get("_rotary_table"), fixed_weights_block()
        if table is None or block is None or table[4] is not block or table[1].shape[0] < max_position:
            inv_freq = self.rotary_emb.inv_freq
            key = (h.device, h.dtype, inv_freq.data_ptr(), inv_freq._version)
            if table is None or table[0] != key or table[1].shape[0] < max_position:
                grown = 2 * table[1].shape[0] if table is not None and table[0] == key else 256
                cos, sin = self.rotary_emb(h[:1, :1], torch.arange(max(max_position, grown), device=h.device)[None])
                table = (key, cos[0], sin[0], signed_sin(sin[0]))
            # checked once per weights_fixed block (one generate call): the head's dtype and rotary buffer are fixed in it
            table = self.__dict__["_rotary_table"] = (*table[:4], block)
        _, cos, sin, sin_signed, _ = table
        return cos[position_ids], sin[position_ids], sin_signed[position_ids]

    def scatter_to_target(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Draft-vocabulary values [..., V'] at their target ids in [..., V] (`fill` elsewhere); unchanged when
        the head scores the full vocabulary."""
        if self.config.draft_vocab_size is None:
            return values
        full = values.new_full((*values.shape[:-1], self.config.vocab_size), fill)
        return full.index_copy_(-1, self.draft_to_target.to(values.device), values)
