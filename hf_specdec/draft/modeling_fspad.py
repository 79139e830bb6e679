"""The FSPAD draft head (arXiv 2408.15562) and the EAGLE-2 head it extends.

Notation (research/fspad.md): H hidden size, I intermediate size, e = e(x_{t+1}) the target's embedding of the
next token, f = f_t the target's last hidden state (after its final norm) at position t.

    h0  = fc([e ; f])                                        EAGLE's fusion, Linear(2H -> H, bias)
    h   = h0 + W_d( SiLU(W_g e) * W_u RMSNorm(h0) )          Feature Sampling (FS), optional
    a   = h + Attn(h)                                        first layer: no input norm
    out = [a ; a] + MLP(RMSNorm(a))   with MLP: I -> 2H      Partial Alignment Distillation (PAD), optional
    logits  = lm_head(out[:, :H])                            the target's own (frozen) lm_head
    f_{t+1} ~ out[:, H:]                                     regressed feature, fed back while drafting

Without PAD the MLP is I -> H and both roles use the same vector (the EAGLE-2 baseline). With
`num_extra_layers` n > 0 (our extension, not the paper's), n plain Llama decoder layers run on the logit half
before the lm_head, and the fed-back feature stays the first layer's: more capacity for the draft distribution,
the feature loop unchanged; `with_extra_layers` grows a trained head so that it drafts as before until trained.
The target's embedding and lm_head are *borrowed* (`attach_target`), never stored in the checkpoint.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.models.llama.modeling_llama import (LlamaAttention, LlamaDecoderLayer, LlamaRMSNorm,
                                                      LlamaRotaryEmbedding)

from .base import (DraftHead, DraftOutput, TargetParts, attention_parts, decoder_layer_parts, decoder_layer_step,
                   decoding_parts, decoding_product, embedding_fingerprint, gated_mlp, head_attention, inference_only,
                   is_plain, mlp_parts, norm_of, projection, tokenizer_hash)
from .configuration_fspad import FSPADConfig

# hidden_states: the logit half; features: the regressed next features (see DraftOutput)
FSPADOutput = DraftOutput


class FSPADDraftModel(DraftHead):
    config_class = FSPADConfig
    config: FSPADConfig
    base_model_prefix = "fspad"
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
        self.extra_layers = nn.ModuleList(LlamaDecoderLayer(config, layer_idx=1 + i) for i in range(config.num_extra_layers))
        self.rotary_emb = LlamaRotaryEmbedding(config.rotary_config())
        if config.draft_vocab_size is not None:
            self.register_buffer("draft_to_target", torch.zeros(config.draft_vocab_size, dtype=torch.long))
        self._target: TargetParts | None = None
        # read on every head step: plain attributes, not the config's (transformers' config lookups cost ~1 us)
        self._feature_sampling, self._partial_alignment = config.use_feature_sampling, config.use_partial_alignment
        self.post_init()

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

    def _borrow(self, target) -> TargetParts:
        """The target's embedding and lm_head (the rows of the draft vocabulary, when it has one)."""
        lm_head = target.get_output_embeddings()
        draft_w = None
        if self.config.draft_vocab_size is not None:
            draft_w = lm_head.weight.detach()[self.draft_to_target.to(lm_head.weight.device)]
        return TargetParts(target.get_input_embeddings(), lm_head, draft_w)

    # ----------------------------------------------------------------------------------------- compute
    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Draft logits over the draft vocabulary (the full target vocabulary unless a reduced one is set)."""
        if inference_only():
            int8 = self.int8_weights
            product = decoding_parts(self, "logits", lambda: self._logits_product(int8), int8)
            if product is not None:
                return product(hidden_states)
        parts = self._parts()
        if parts.draft_lm_weight is not None:
            return F.linear(hidden_states, parts.draft_lm_weight)
        return parts.lm_head(hidden_states)

    def _logits_product(self, int8: bool):
        """The `decoding_product` of the draft logits, or None where the target's lm_head is not a plain
        nn.Linear (it is then called as a module). Cached on the head, not on the target's module."""
        parts = self._parts()
        lm_head = parts.lm_head
        if parts.draft_lm_weight is not None:  # rows copied from lm_head at each attach: keyed on their source
            return decoding_product(self, "logits", ((parts.draft_lm_weight, None),), int8=int8,
                                    source=(lm_head.weight, self.draft_to_target))
        if is_plain(lm_head):
            return decoding_product(self, "logits", ((lm_head.weight, lm_head.bias),), int8=int8)
        return None

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values=None,
        max_position: int | None = None,
    ) -> FSPADOutput:
        """One pass of the head.

        input_ids [B, q] (the tokens x_{t+1}) or inputs_embeds [B, q, H]; features [B, q, H] (f_t);
        position_ids [B, q]; max_position: a bound on them the caller knows, for the rotary table
        (`position_embeddings`); cache (or its old name past_key_values): the head's KV cache, or None;
        attention_mask: a 4D mask over the cache and the new tokens (additive [B, 1, q, kv], or the packed
        tree form for the tree attention implementation), or None for causal attention -- allowed only when
        the cache is empty or one token is fed, since attention with is_causal and fewer queries than keys
        aligns the triangle to the first keys, not the newest.
        """
        cache = cache if cache is not None else past_key_values
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        dtype = self.fc.weight.dtype
        int8 = self.int8_weights and inference_only()
        p = decoding_parts(self, "step", lambda: self._step_parts(int8), int8, self.config._attn_implementation)
        e = inputs_embeds if inputs_embeds.dtype == dtype else inputs_embeds.to(dtype)
        h = p.fc(torch.cat([e, features if features.dtype == dtype else features.to(dtype)], dim=-1))
        if self._feature_sampling:
            h = h + p.fs_down(F.silu(p.fs_gate(e)) * p.fs_up(p.fs_norm(h)))
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None and past > 0 and h.shape[1] > 1:
            raise ValueError(
                f"FSPADDraftModel: {h.shape[1]} tokens after {past} cached positions need an explicit attention_mask "
                "(e.g. hf_specdec.tree.tree_mask_for(head, causal ancestors, cached)); causal attention without one "
                "would attend to the first cached keys."
            )
        if position_ids is None:
            position_ids = torch.arange(past, past + h.shape[1], device=h.device).unsqueeze(0)
        cos_sin = self.position_embeddings(h, position_ids, max_position)
        is_causal = attention_mask is None and h.shape[1] > 1
        a = h + head_attention(self.self_attn, h, cos_sin, attention_mask, cache, is_causal, parts=p.attention)
        mlp = gated_mlp(p.mlp, p.post_norm(a))
        if self._partial_alignment:
            H = a.shape[-1]
            hidden, features_out = a + mlp[..., :H], a + mlp[..., H:]
        else:
            hidden = features_out = a + mlp
        for layer, parts in zip(self.extra_layers, p.extra):
            hidden = decoder_layer_step(layer, hidden, cos_sin, attention_mask, cache, is_causal, parts)
        return FSPADOutput(hidden_states=hidden, features=features_out, cache=cache)

    def _step_parts(self, int8: bool) -> SimpleNamespace:
        """What `forward` multiplies by and normalizes with (`projection`, `norm_of`, `attention_parts`): the
        modules themselves while training, products prepared for decoding otherwise."""
        fs = self._feature_sampling
        return SimpleNamespace(
            fc=projection(self.fc, int8),
            fs_norm=norm_of(self.fs_norm) if fs else None,
            fs_gate=projection(self.fs_gate_proj, int8) if fs else None,
            fs_up=projection(self.fs_up_proj, int8) if fs else None,
            fs_down=projection(self.fs_down_proj, int8) if fs else None,
            attention=attention_parts(self.self_attn, int8),
            post_norm=norm_of(self.post_attention_layernorm),
            mlp=mlp_parts(self, self.gate_proj, self.up_proj, self.down_proj, F.silu, int8),
            extra=[decoder_layer_parts(layer, int8) for layer in self.extra_layers],
        )

    def with_extra_layers(self, n: int) -> "FSPADDraftModel":
        """This head with `n` extra decoder layers (config.num_extra_layers, module docstring): the ones it has
        keep their weights, the new ones start with zero output projections (o_proj, down_proj), so each adds
        nothing and the grown head drafts exactly as this one until it is trained (the zeros get gradients
        first, the rest of the layer after). Attached to this head's target, if it has one."""
        have = self.config.num_extra_layers
        if not isinstance(n, int) or n < have:
            raise ValueError(f"with_extra_layers({n!r}): the head has {have} extra layers already; it only grows.")
        config = self.config.__class__.from_dict({**self.config.to_dict(), "num_extra_layers": n})
        config._attn_implementation = self.config._attn_implementation
        grown = self.__class__(config).to(device=self.device, dtype=self.dtype)
        missing, unexpected = grown.load_state_dict(self.state_dict(), strict=False)
        new = tuple(f"extra_layers.{i}." for i in range(have, n))
        if unexpected or not all(k.startswith(new) for k in missing):
            raise RuntimeError(f"with_extra_layers: state mismatch (missing {missing}, unexpected {unexpected}).")
        with torch.no_grad():
            for layer in grown.extra_layers[have:]:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
        grown.generation_config = self.generation_config
        if getattr(self, "_target", None) is not None:
            grown._target = self._target
        return grown.train(self.training)
