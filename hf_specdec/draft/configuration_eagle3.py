"""Configuration of the EAGLE-3 draft head (read from the EAGLE repository's or vllm-project/speculators'
checkpoints by draft/formats.py)."""

from __future__ import annotations

from .configuration_base import DraftHeadConfig


class Eagle3Config(DraftHeadConfig):
    r"""Configuration of [`Eagle3DraftModel`].

    Args (besides the layer's shape, see DraftHeadConfig):
        draft_vocab_size: the head's own lm_head rows (mapped to target ids
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
        draft_vocab_size: int | None = None,
        target_hidden_size: int | None = None,
        feature_layers: list[int] | None = None,
        num_fused_layers: int = 3,
        norm_before_residual: bool = False,
        num_extra_layers: int = 0,
        **kwargs,
    ):
        kwargs.setdefault("rms_norm_eps", 1e-6)
        super().__init__(**kwargs)  # the layer's shape: DraftHeadConfig
        self.draft_vocab_size = draft_vocab_size if draft_vocab_size is not None else self.vocab_size
        self.target_hidden_size = target_hidden_size if target_hidden_size is not None else self.hidden_size
        self.feature_layers = list(feature_layers) if feature_layers is not None else None
        self.num_fused_layers = num_fused_layers
        self.norm_before_residual = norm_before_residual
        self.num_extra_layers = num_extra_layers
        # what transformers' Llama modules read from a config
        self.hidden_act, self.mlp_bias = "silu", False

    @property
    def variant(self) -> str:
        return "eagle3"
