"""The EAGLE-3 draft head (research/heads.md section 2), runnable by the same engine as the FSPAD head.

Notation: H hidden size, e = e(x_{t+1}) the target's embedding of the next token, g_t = [h^(l1)_t ; h^(l2)_t ;
h^(l3)_t] the target's hidden states entering layers l1 < l2 < l3 at position t (default 2, L // 2, L - 3).

    h    = fc(g_t)                 (3H -> H, no bias) at positions with target features; while drafting the
                                   head's own fed-back output, already H wide (fc skipped)
    r    = hidden_norm(h) if norm_before_residual else h
    a    = r + Attn([input_layernorm(e) ; hidden_norm(h)])        the attention reads 2H
    out  = a + MLP(post_attention_layernorm(a))                   (+ plain decoder layers, if any)
    logits = lm_head(norm(out)) over the draft vocabulary; target id = draft id + d2t[draft id]
    out (before the norm) is fed back to the children.

The target's embedding is borrowed; the head's own norm and lm_head are stored in its checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from .base import (DraftHead, DraftOutput, TargetParts, attention_parts, decoder_layer_parts, decoder_layer_step,
                   decoding_parts, gated_mlp, head_attention, inference_only, mlp_parts, projection, rms_norm)
from .configuration_eagle3 import Eagle3Config


def default_feature_layers(num_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's low / middle / high layers for a target with `num_layers` decoder layers."""
    return (2, num_layers // 2, num_layers - 3)


class Eagle3Layer(nn.Module):
    """The first decoder layer: attention over [normed embedding ; normed feature] (2H wide)."""

    def __init__(self, config: Eagle3Config):
        super().__init__()
        H = config.hidden_size
        self.input_layernorm = LlamaRMSNorm(H, eps=config.rms_norm_eps)
        self.hidden_norm = LlamaRMSNorm(H, eps=config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, layer_idx=0)
        d, bias = config.head_dim, config.attention_bias
        self.self_attn.q_proj = nn.Linear(2 * H, config.num_attention_heads * d, bias=bias)
        self.self_attn.k_proj = nn.Linear(2 * H, config.num_key_value_heads * d, bias=bias)
        self.self_attn.v_proj = nn.Linear(2 * H, config.num_key_value_heads * d, bias=bias)
        self.post_attention_layernorm = LlamaRMSNorm(H, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)
        self.norm_before_residual = config.norm_before_residual


class Eagle3DraftModel(DraftHead):
    config_class = Eagle3Config
    config: Eagle3Config
    base_model_prefix = "eagle3"
    _no_split_modules = ["Eagle3DraftModel"]

    def __init__(self, config: Eagle3Config):
        super().__init__(config)
        self.generation_config = getattr(self, "generation_config", None)
        H = config.hidden_size
        self.fc = nn.Linear(config.num_fused_layers * config.target_hidden_size, H, bias=False)
        self.midlayer = Eagle3Layer(config)
        self.extra_layers = nn.ModuleList(LlamaDecoderLayer(config, layer_idx=1 + i) for i in range(config.num_extra_layers))
        self.norm = LlamaRMSNorm(H, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(H, config.draft_vocab_size, bias=False)
        self.rotary_emb = LlamaRotaryEmbedding(config.rotary_config())
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))
        self.feature_layers = tuple(config.feature_layers) if config.feature_layers is not None else None
        self._target: TargetParts | None = None
        self.post_init()

    @property
    def draft_to_target(self) -> torch.Tensor:
        """Target id of each draft id: draft id + d2t[draft id]."""
        return torch.arange(self.config.draft_vocab_size, device=self.d2t.device) + self.d2t

    # ----------------------------------------------------------------------------------------- pairing
    def target_hidden_size(self) -> int:
        return self.config.target_hidden_size

    def _layer_mismatches(self, target_config) -> list[str]:
        L = target_config.num_hidden_layers
        layers = self.feature_layers or default_feature_layers(L)
        bad = [i for i in layers if not 0 <= i < L]
        problems = [f"fused layers {list(layers)}: the target has {L} layers"] if bad else []
        if len(layers) != self.config.num_fused_layers:
            problems.append(f"fused layers: the head reads {self.config.num_fused_layers}, {len(layers)} given")
        return problems

    def _borrow(self, target) -> TargetParts:
        if self.feature_layers is None:
            self.feature_layers = default_feature_layers(target.config.get_text_config(decoder=True).num_hidden_layers)
        return TargetParts(target.get_input_embeddings(), None, None)

    # ----------------------------------------------------------------------------------------- compute
    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Draft logits over the draft vocabulary, from the normed output (forward's hidden_states)."""
        return projection(self.lm_head, self.int8_weights)(hidden_states)

    def forward(self, input_ids=None, features=None, position_ids=None, attention_mask=None, cache=None,
                inputs_embeds=None, past_key_values=None, max_position=None) -> DraftOutput:
        """One pass. features [B, q, 3H'] (the target's fused hidden states) or [B, q, H] (the head's own
        output, fed back); otherwise as FSPADDraftModel.forward."""
        cache = cache if cache is not None else past_key_values
        e = (inputs_embeds if inputs_embeds is not None else self.embed(input_ids)).to(self.fc.weight.dtype)
        h = features.to(e.dtype)
        int8 = self.int8_weights and inference_only()
        if h.shape[-1] != self.config.hidden_size:
            h = projection(self.fc, int8)(h)
        layer = self.midlayer
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None and past > 0 and h.shape[1] > 1:
            raise ValueError(f"Eagle3DraftModel: {h.shape[1]} tokens after {past} cached positions need an explicit "
                             "attention_mask (causal attention would attend to the first cached keys).")
        if position_ids is None:
            position_ids = torch.arange(past, past + h.shape[1], device=h.device).unsqueeze(0)
        cos_sin = self.position_embeddings(h, position_ids, max_position)
        normed_h = rms_norm(layer.hidden_norm, h)
        residual = normed_h if layer.norm_before_residual else h
        parts = decoding_parts(self, "attention", lambda: attention_parts(layer.self_attn, int8), int8,
                               self.config._attn_implementation)
        is_causal = attention_mask is None and h.shape[1] > 1
        attn = head_attention(layer.self_attn, torch.cat([rms_norm(layer.input_layernorm, e), normed_h], dim=-1), cos_sin,
                              attention_mask, cache, is_causal=is_causal, parts=parts)
        out = residual + attn
        mlp = decoding_parts(self, "mlp", lambda: mlp_parts(layer.mlp, layer.mlp.gate_proj, layer.mlp.up_proj,
                                                            layer.mlp.down_proj, layer.mlp.act_fn, int8), int8)
        out = out + gated_mlp(mlp, rms_norm(layer.post_attention_layernorm, out))
        if self.extra_layers:
            extra = decoding_parts(self, "extra", lambda: [decoder_layer_parts(x, int8) for x in self.extra_layers], int8,
                                   self.config._attn_implementation)
            for extra_layer, layer_parts in zip(self.extra_layers, extra):
                out = decoder_layer_step(extra_layer, out, cos_sin, attention_mask, cache, is_causal, layer_parts)
        return DraftOutput(hidden_states=rms_norm(self.norm, out), features=out, cache=cache)
