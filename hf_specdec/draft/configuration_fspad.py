"""Configuration of the FSPAD draft head (and of the EAGLE-2 baseline head it generalises)."""

from __future__ import annotations

from .configuration_base import DraftHeadConfig


class FSPADConfig(DraftHeadConfig):
    r"""Configuration of [`FSPADDraftModel`].

    The head is one Llama-style decoder layer that reads the target's token embedding and last hidden state
    ("feature") and predicts the next feature. Its size follows the target it was made for.

    Args (besides the layer's shape, see DraftHeadConfig):
        fc_bias: whether the fusion layer `fc` has a bias (EAGLE heads saved with `"bias": false` have none).
        use_feature_sampling: FSPAD's Feature Sampling block (embedding-gated SwiGLU after `fc`).
        use_partial_alignment: FSPAD's Partial Alignment Distillation (down projection widened to 2H; the first
            half feeds the logits, the second half is the regressed feature).
            Both False gives the EAGLE-2 baseline head; one of them gives the paper's single-component ablations.
        draft_vocab_size: score only this many target tokens (a frozen slice of the target's lm_head selected
            by the saved `draft_to_target` map). None scores the full vocabulary.
        num_extra_layers: plain Llama decoder layers after the first, on the half the logits read (more capacity
            for the draft distribution; the fed-back feature stays the first layer's). 0: the paper's head.
        target_*: what the head was made for; checked when the head is paired with a target.
    """

    model_type = "fspad"

    def __init__(
        self,
        fc_bias: bool = True,
        use_feature_sampling: bool = True,
        use_partial_alignment: bool = True,
        draft_vocab_size: int | None = None,
        target_model_type: str | None = None,
        target_tokenizer_hash: str | None = None,
        target_adapter: str | None = None,
        num_extra_layers: int = 0,
        **kwargs,
    ):
        self.fc_bias = fc_bias
        self.use_feature_sampling = use_feature_sampling
        self.use_partial_alignment = use_partial_alignment
        self.draft_vocab_size = draft_vocab_size
        self.target_model_type = target_model_type
        self.target_tokenizer_hash = target_tokenizer_hash
        self.target_adapter = target_adapter
        if not isinstance(num_extra_layers, int) or num_extra_layers < 0:
            raise ValueError(f"num_extra_layers must be a non-negative int, got {num_extra_layers!r}.")
        self.num_extra_layers = num_extra_layers
        super().__init__(**kwargs)  # the layer's shape: DraftHeadConfig
        # what transformers' Llama modules read from a config (the extra layers' MLPs)
        self.hidden_act, self.mlp_bias = "silu", False

    @property
    def variant(self) -> str:
        """Short name of the head variant: fspad, fs-only, pad-only or eagle2."""
        return {
            (True, True): "fspad",
            (True, False): "fs-only",
            (False, True): "pad-only",
            (False, False): "eagle2",
        }[(bool(self.use_feature_sampling), bool(self.use_partial_alignment))]
