"""Configuration of the FSPAD draft head (and of the EAGLE-2 baseline head it generalises)."""

from __future__ import annotations

from transformers import LlamaConfig, PretrainedConfig


class FSPADConfig(PretrainedConfig):
    r"""Configuration of [`FSPADDraftModel`].

    The head is one Llama-style decoder layer that reads the target's token embedding and last hidden state
    ("feature") and predicts the next feature. Its size follows the target it was made for.

    Args:
        hidden_size, intermediate_size, num_attention_heads, num_key_value_heads, head_dim, rms_norm_eps,
        rope_theta, max_position_embeddings, attention_bias: the decoder layer's shape (copied from the target).
        fc_bias: whether the fusion layer `fc` has a bias (EAGLE heads saved with `"bias": false` have none).
        vocab_size: the target's vocabulary size.
        use_feature_sampling: FSPAD's Feature Sampling block (embedding-gated SwiGLU after `fc`).
        use_partial_alignment: FSPAD's Partial Alignment Distillation (down projection widened to 2H; the first
            half feeds the logits, the second half is the regressed feature).
            Both False gives the EAGLE-2 baseline head; one of them gives the paper's single-component ablations.
        draft_vocab_size: score only this many target tokens (a frozen slice of the target's lm_head selected
            by the saved `draft_to_target` map). None scores the full vocabulary.
        rope_scaling: the rotary scaling of the target (e.g. Llama-3.1's "llama3"), None for plain RoPE.
        target_*: what the head was made for; checked when the head is paired with a target.
        source_layout, source: for a head converted from another project's layout (formats.py), which one.
    """

    model_type = "fspad"

    def __init__(
        self,
        hidden_size: int = 576,
        intermediate_size: int = 1536,
        num_attention_heads: int = 9,
        num_key_value_heads: int = 3,
        head_dim: int | None = None,
        rms_norm_eps: float = 1e-5,
        rope_theta: float = 10000.0,
        rope_scaling: dict | None = None,
        max_position_embeddings: int = 8192,
        attention_bias: bool = False,
        fc_bias: bool = True,
        attention_dropout: float = 0.0,
        vocab_size: int = 49152,
        use_feature_sampling: bool = True,
        use_partial_alignment: bool = True,
        draft_vocab_size: int | None = None,
        target_model_type: str | None = None,
        target_architecture: str | None = None,
        target_fingerprint: list[float] | None = None,
        target_tokenizer_hash: str | None = None,
        target_adapter: str | None = None,
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
        self.fc_bias = fc_bias
        self.attention_dropout = attention_dropout
        self.vocab_size = vocab_size
        self.use_feature_sampling = use_feature_sampling
        self.use_partial_alignment = use_partial_alignment
        self.draft_vocab_size = draft_vocab_size
        self.target_model_type = target_model_type
        self.target_architecture = target_architecture
        self.target_fingerprint = target_fingerprint
        self.target_tokenizer_hash = target_tokenizer_hash
        self.target_adapter = target_adapter
        self.source_layout = source_layout
        self.source = source
        self.initializer_range = initializer_range
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    @property
    def variant(self) -> str:
        """Short name of the head variant: fspad, fs-only, pad-only or eagle2."""
        return {
            (True, True): "fspad",
            (True, False): "fs-only",
            (False, True): "pad-only",
            (False, False): "eagle2",
        }[(bool(self.use_feature_sampling), bool(self.use_partial_alignment))]

    def rotary_config(self) -> LlamaConfig:
        """A LlamaConfig carrying the head's rotary settings, for transformers' own rotary embedding module."""
        return LlamaConfig(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            max_position_embeddings=self.max_position_embeddings,
            attention_bias=self.attention_bias,
            num_hidden_layers=1,
            vocab_size=self.vocab_size,
            rope_parameters={"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta},
        )
