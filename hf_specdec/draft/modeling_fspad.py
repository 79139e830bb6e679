"""The FSPAD draft head (arXiv 2408.15562) and the EAGLE-2 head it extends.

Notation (research/fspad.md): H hidden size, I intermediate size, e = e(x_{t+1}) the target's embedding of the
next token, f = f_t the target's last hidden state (after its final norm) at position t.

    h0  = fc([e ; f])                                        EAGLE's fusion, Linear(2H -> H, bias)
    h   = h0 + W_d( SiLU(W_g e) * W_u RMSNorm(h0) )          Feature Sampling (FS), optional
    a   = h + Attn(h)                                        first layer: no input norm
    out = [a ; a] + MLP(RMSNorm(a))   with MLP: I -> 2H      Partial Alignment Distillation (PAD), optional
    logits  = lm_head(out[:, :H])                            the target's own (frozen) lm_head
    f_{t+1} ~ out[:, H:]                                     regressed feature, fed back while drafting

Without PAD the MLP is I -> H and both roles use the same vector (the EAGLE-2 baseline).
The target's embedding and lm_head are *borrowed* (`attach_target`), never stored in the checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import GenerationConfig, PreTrainedModel
from transformers.modeling_outputs import ModelOutput
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRMSNorm, LlamaRotaryEmbedding

from ..compat import cache_kwargs
from .configuration_fspad import FSPADConfig

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
    logger.warning("hf_specdec: the FSPAD head (%s on %s) follows its target to %s on %s.", dtype, device,
                   target_dtype, target_device)


def check_loading_info(info: dict, source) -> None:
    """Raise when from_pretrained's loading report lists tensors the head lacks, does not know, or cannot take."""
    problems = []
    for key, what in (("missing_keys", "missing"), ("unexpected_keys", "unexpected"),
                      ("mismatched_keys", "of the wrong shape")):
        names = sorted(str(k if isinstance(k, str) else k[0]) for k in info.get(key) or ())
        if names:
            problems.append(f"{what}: {', '.join(names)}")
    if problems:
        raise ValueError(
            f"The FSPAD head checkpoint at {source} does not match FSPADDraftModel ({'; '.join(problems)}). A "
            "partly loaded head would draft with random weights. Check that the folder holds a complete head saved "
            "by FSPADDraftModel.save_pretrained (heads in the EAGLE / EAGLE-3 layouts need converting first)."
        )


@dataclass
class FSPADOutput(ModelOutput):
    """hidden_states: the logit half [B, q, H]; features: the regressed next features [B, q, H]; cache: the
    head's KV cache, updated."""

    hidden_states: torch.Tensor | None = None
    features: torch.Tensor | None = None
    cache: object | None = None


@dataclass
class _TargetParts:
    """The target modules the head borrows. A plain object, so nn.Module does not register (or save) them."""

    embed_tokens: nn.Module
    lm_head: nn.Module
    draft_lm_weight: torch.Tensor | None  # rows of lm_head for a reduced draft vocabulary


class FSPADDraftModel(PreTrainedModel):
    config_class = FSPADConfig
    config: FSPADConfig
    base_model_prefix = "fspad"
    main_input_name = "input_ids"
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_attention_backend = True
    _no_split_modules = ["FSPADDraftModel"]

    def __init__(self, config: FSPADConfig):
        super().__init__(config)
        self.generation_config = getattr(self, "generation_config", None)  # tree defaults, see save_pretrained
        H, I = config.hidden_size, config.intermediate_size
        self.fc = nn.Linear(2 * H, H, bias=config.fc_bias)
        if config.use_feature_sampling:
            self.fs_norm = LlamaRMSNorm(H, eps=config.rms_norm_eps)
            self.fs_gate_proj = nn.Linear(H, I, bias=False)
            self.fs_up_proj = nn.Linear(H, I, bias=False)
            self.fs_down_proj = nn.Linear(I, H, bias=False)
        # transformers' own attention: any registered attention implementation (e.g. our tree kernel) serves it.
        self.self_attn = LlamaAttention(config, layer_idx=0)
        self.post_attention_layernorm = LlamaRMSNorm(H, eps=config.rms_norm_eps)
        self.gate_proj = nn.Linear(H, I, bias=False)
        self.up_proj = nn.Linear(H, I, bias=False)
        self.down_proj = nn.Linear(I, 2 * H if config.use_partial_alignment else H, bias=False)
        self.rotary_emb = LlamaRotaryEmbedding(config.rotary_config())
        if config.draft_vocab_size is not None:
            self.register_buffer("draft_to_target", torch.zeros(config.draft_vocab_size, dtype=torch.long))
        self._target: _TargetParts | None = None
        self.post_init()

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
        check_loading_info(info, pretrained_model_name_or_path)
        hub_kwargs = {k: kwargs[k] for k in cls._HUB_KWARGS if k in kwargs}
        try:
            model.generation_config = GenerationConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        except OSError:  # a head saved without tree defaults
            model.generation_config = None
        return (model, info) if want_info else model

    # ----------------------------------------------------------------------------------------- pairing
    @classmethod
    def from_target(cls, target: PreTrainedModel, tokenizer=None, variant: str = "fspad", **overrides):
        """A fresh (untrained) head sized for `target` and attached to it.

        variant: "fspad" (FS + PAD), "eagle2" (neither), "fs-only" or "pad-only" (the paper's ablations).
        """
        flags = {"fspad": (True, True), "eagle2": (False, False), "fs-only": (True, False), "pad-only": (False, True)}
        if variant not in flags:
            raise ValueError(f"Unknown head variant {variant!r}; choose one of {sorted(flags)}.")
        tc = target.config.get_text_config(decoder=True)
        rope = getattr(tc, "rope_parameters", None) or {}
        embed = target.get_input_embeddings().weight
        config = FSPADConfig(
            hidden_size=tc.hidden_size,
            intermediate_size=tc.intermediate_size,
            num_attention_heads=tc.num_attention_heads,
            num_key_value_heads=getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads,
            head_dim=getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads,
            rms_norm_eps=getattr(tc, "rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", getattr(tc, "rope_theta", 10000.0)),
            max_position_embeddings=getattr(tc, "max_position_embeddings", 8192),
            vocab_size=embed.shape[0],
            use_feature_sampling=flags[variant][0],
            use_partial_alignment=flags[variant][1],
            target_model_type=tc.model_type,
            target_architecture=(target.config.architectures or [type(target).__name__])[0],
            target_fingerprint=embedding_fingerprint(embed),
            target_tokenizer_hash=tokenizer_hash(tokenizer) if tokenizer is not None else None,
            **overrides,
        )
        head = cls(config).to(device=target.device, dtype=target.dtype)
        head.attach_target(target, tokenizer=tokenizer)
        return head.eval()

    def target_mismatches(self, target: PreTrainedModel, tokenizer=None) -> list[str]:
        """What differs between the target this head was made for and `target` (empty when they match)."""
        c, tc = self.config, target.config.get_text_config(decoder=True)
        embed = target.get_input_embeddings().weight
        problems = []
        if tc.hidden_size != c.hidden_size:
            problems.append(f"hidden size: head {c.hidden_size}, target {tc.hidden_size}")
        if embed.shape[0] != c.vocab_size:
            problems.append(f"vocabulary size: head {c.vocab_size}, target {embed.shape[0]}")
        if not problems and c.target_fingerprint is not None:
            if not same_fingerprint(embedding_fingerprint(embed), c.target_fingerprint):
                problems.append("embedding fingerprint: the target's token embeddings are not those the head was made for")
        if tokenizer is not None and c.target_tokenizer_hash is not None:
            if tokenizer_hash(tokenizer) != c.target_tokenizer_hash:
                problems.append("tokenizer: its vocabulary differs from the one the head was made for")
        return problems

    def attach_target(self, target: PreTrainedModel, tokenizer=None) -> "FSPADDraftModel":
        """Borrow the target's embedding and lm_head (after checking the head was made for this target)."""
        problems = self.target_mismatches(target, tokenizer)
        if problems:
            made_for = self.config.target_architecture or "another model"
            raise ValueError(
                f"This FSPAD head was made for {made_for} and does not match the target "
                f"{type(target).__name__}: " + "; ".join(problems) + ". Load the head trained for this target, or "
                "create one with FSPADDraftModel.from_target(target)."
            )
        self.follow(target.get_input_embeddings().weight)
        lm_head = target.get_output_embeddings()
        draft_w = None
        if self.config.draft_vocab_size is not None:
            draft_w = lm_head.weight.detach()[self.draft_to_target.to(lm_head.weight.device)]
        self._target = _TargetParts(target.get_input_embeddings(), lm_head, draft_w)
        return self

    def follow(self, weight: torch.Tensor) -> None:
        """Move the head to the dtype and device of the target's weights: it computes on the target's own
        embeddings and lm_head, so a bf16 head beside a float32 target (one of them cast with .to()) is a
        mismatch of the user's setup, not a choice. Logged once per (from, to)."""
        mine = self.fc.weight
        if (mine.dtype, mine.device) != (weight.dtype, weight.device):
            _log_follow(str(mine.dtype), str(mine.device), str(weight.dtype), str(weight.device))
            self.to(device=weight.device, dtype=weight.dtype)

    def _parts(self) -> _TargetParts:
        if self._target is None:
            raise RuntimeError("The head has no target attached: call head.attach_target(target) first.")
        return self._target

    # ----------------------------------------------------------------------------------------- compute
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._parts().embed_tokens(input_ids)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Draft logits over the draft vocabulary (the full target vocabulary unless a reduced one is set)."""
        parts = self._parts()
        if parts.draft_lm_weight is not None:
            return F.linear(hidden_states, parts.draft_lm_weight)
        return parts.lm_head(hidden_states)

    def scatter_to_target(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Draft-vocabulary values [..., V'] at their target ids in [..., V] (`fill` elsewhere); unchanged when
        the head scores the full vocabulary."""
        if self.config.draft_vocab_size is None:
            return values
        full = values.new_full((*values.shape[:-1], self.config.vocab_size), fill)
        return full.index_copy_(-1, self.draft_to_target.to(values.device), values)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values=None,
        **kwargs,
    ) -> FSPADOutput:
        """One pass of the head.

        input_ids [B, q] (the tokens x_{t+1}) or inputs_embeds [B, q, H]; features [B, q, H] (f_t);
        position_ids [B, q]; cache (or its old name past_key_values): the head's KV cache, or None;
        attention_mask: a 4D mask over the cache and the new tokens (additive [B, 1, q, kv], or the packed
        tree form for the tree attention implementation), or None for causal attention -- allowed only when
        the cache is empty or one token is fed, since attention with is_causal and fewer queries than keys
        aligns the triangle to the first keys, not the newest.
        """
        cache = cache if cache is not None else past_key_values
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        e = inputs_embeds.to(self.fc.weight.dtype)
        h = self.fc(torch.cat([e, features.to(e.dtype)], dim=-1))
        if self.config.use_feature_sampling:
            h = h + self.fs_down_proj(F.silu(self.fs_gate_proj(e)) * self.fs_up_proj(self.fs_norm(h)))
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None and past > 0 and h.shape[1] > 1:
            raise ValueError(
                f"FSPADDraftModel: {h.shape[1]} tokens after {past} cached positions need an explicit attention_mask "
                "(e.g. hf_specdec.tree.tree_mask_for(head, causal ancestors, cached)); causal attention without one "
                "would attend to the first cached keys."
            )
        if position_ids is None:
            position_ids = torch.arange(past, past + h.shape[1], device=h.device).unsqueeze(0)
        cos_sin = self.rotary_emb(h, position_ids)
        is_causal = attention_mask is None and h.shape[1] > 1
        attn, _ = self.self_attn(
            hidden_states=h,
            position_embeddings=cos_sin,
            attention_mask=attention_mask,
            is_causal=is_causal,
            **cache_kwargs(cache),
            **kwargs,
        )
        a = h + attn
        m = self.post_attention_layernorm(a)
        mlp = self.down_proj(F.silu(self.gate_proj(m)) * self.up_proj(m))
        if self.config.use_partial_alignment:
            H = self.config.hidden_size
            hidden, features_out = a + mlp[..., :H], a + mlp[..., H:]
        else:
            hidden = features_out = a + mlp
        return FSPADOutput(hidden_states=hidden, features=features_out, cache=cache)
