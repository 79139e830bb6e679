"""What every draft head's configuration holds: the decoder layer's shape (copied from the target it was made
for), its rotary settings, and where it came from."""

from __future__ import annotations

from transformers import LlamaConfig, PretrainedConfig


class DraftHeadConfig(PretrainedConfig):
    r"""Base of the draft heads' configurations.

    Args:
        hidden_size, intermediate_size, num_attention_heads, num_key_value_heads, head_dim, rms_norm_eps,
        rope_theta, max_position_embeddings, attention_bias, attention_dropout: the decoder layer's shape.
        rotary_scaling: the target's rotary scaling (e.g. Llama-3.1's "llama3" parameters), None for plain RoPE.
        vocab_size: the target's vocabulary size.
        target_architecture, target_fingerprint: what the head was made for; checked when it is paired.
        source_layout, source: for a head read from another project's layout (formats.py), which one.
    """

    def __init__(
        self,
        hidden_size: int = 576,
        intermediate_size: int = 1536,
        num_attention_heads: int = 9,
        num_key_value_heads: int = 3,
        head_dim: int | None = None,
        rms_norm_eps: float = 1e-5,
        rope_theta: float = 10000.0,
        rotary_scaling: dict | None = None,
        max_position_embeddings: int = 8192,
        attention_bias: bool = False,
        attention_dropout: float = 0.0,
        vocab_size: int = 49152,
        target_architecture: str | None = None,
        target_fingerprint: list[float] | None = None,
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
        self.rotary_scaling = rotary_scaling
        self.max_position_embeddings = max_position_embeddings
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.vocab_size = vocab_size
        self.target_architecture = target_architecture
        self.target_fingerprint = target_fingerprint
        self.source_layout = source_layout
        self.source = source
        self.initializer_range = initializer_range
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def rotary_config(self) -> LlamaConfig:
        """A LlamaConfig carrying the head's rotary settings, for transformers' own rotary embedding module."""
        return LlamaConfig(
            hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim, rms_norm_eps=self.rms_norm_eps, max_position_embeddings=self.max_position_embeddings,
            attention_bias=self.attention_bias, num_hidden_layers=1, vocab_size=self.vocab_size,
            rope_parameters={"rope_type": "default", **(self.rotary_scaling or {}), "rope_theta": self.rope_theta},
        )
