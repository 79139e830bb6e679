"""Configuration of the EAGLE-3 draft head (read from the EAGLE repository's or vllm-project/speculators'
checkpoints by draft/formats.py)."""

from __future__ import annotations

from transformers import LlamaConfig, PretrainedConfig


class Eagle3Config(PretrainedConfig):
    r"""Configuration of [`Eagle3DraftModel`].

    Args:
        hidden_size, intermediate_size, num_attention_heads, num_key_value_heads, head_dim, rms_norm_eps,
        rope_theta, rope_scaling, max_position_embeddings, attention_bias: the decoder layer's shape.
        vocab_size: the target's vocabulary; draft_vocab_size: the head's own lm_head rows (mapped to target ids
            by the saved `d2t` offsets: target id = draft id + d2t[draft id]).
        target_hidden_size: width of each fused target hidden state (the fc reads len(feature_layers) of them).
        feature_layers: the target layers whose input hidden states are fused (HF `hidden_states[i]`); None
            means EAGLE-3's default [2, L // 2, L - 3] for the target's L layers, resolved when paired.
        num_fused_layers: how many hidden states the fc reads (3 in every published head).
        norm_before_residual: speculators' option: the residual is hidden_norm(h) instead of h.
        num_extra_layers: plain decoder layers after the first (some speculators heads have them).
    """

    model_type = "hf_specdec_eagle3"

    def __init__(
        self,
        hidden_size: int = 576,
        intermediate_size: int = 1536,
        num_attention_heads: int = 9,
        num_key_value_heads: int = 3,
        head_dim: int | None = None,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 10000.0,
        rope_scaling: dict | None = None,
        max_position_embeddings: int = 8192,
        attention_bias: bool = False,
        attention_dropout: float = 0.0,
        vocab_size: int = 49152,
        draft_vocab_size: int | None = None,
        target_hidden_size: int | None = None,
        feature_layers: list[int] | None = None,
        num_fused_layers: int = 3,
        norm_before_residual: bool = False,
        num_extra_layers: int = 0,
        target_fingerprint: list[float] | None = None,
        target_architecture: str | None = None,
        source_layout: str | None = None,
        source: str | None = None,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim if head_dim is not None else hidden_size // num_attention_heads
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.max_position_embeddings = max_position_embeddings
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.vocab_size = vocab_size
        self.draft_vocab_size = draft_vocab_size if draft_vocab_size is not None else vocab_size
        self.target_hidden_size = target_hidden_size if target_hidden_size is not None else hidden_size
        self.feature_layers = list(feature_layers) if feature_layers is not None else None
        self.num_fused_layers = num_fused_layers
        self.norm_before_residual = norm_before_residual
        self.num_extra_layers = num_extra_layers
        self.target_fingerprint = target_fingerprint
        self.target_architecture = target_architecture
        self.source_layout = source_layout
        self.source = source
        self.initializer_range = initializer_range
        # what transformers' Llama modules read from a config
        self.hidden_act, self.mlp_bias = "silu", False
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    @property
    def variant(self) -> str:
        return "eagle3"

    def rotary_config(self) -> LlamaConfig:
        """A LlamaConfig carrying the head's rotary settings, for transformers' own rotary embedding module."""
        return LlamaConfig(
            hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim, rms_norm_eps=self.rms_norm_eps, max_position_embeddings=self.max_position_embeddings,
            attention_bias=self.attention_bias, num_hidden_layers=1 + self.num_extra_layers, vocab_size=self.vocab_size,
            rope_parameters={"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta},
        )
