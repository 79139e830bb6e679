"""Tiny random targets and draft heads shared by the tests."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import hf_specdec
from hf_specdec import FSPADDraftModel
from hf_specdec.testing import OracleHead, oracle_head  # noqa: F401  (used by the test modules)

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def tiny_target(family: str = "llama", vocab_size: int = 128, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random causal LM; initializer_range 0.2 gives peaked logits, so argmax ties are negligible."""
    torch.manual_seed(seed)
    kwargs = {**TINY, "vocab_size": vocab_size, "initializer_range": 0.2, "pad_token_id": 0, **overrides}
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**kwargs))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(use_sliding_window=False, **kwargs))
    else:
        raise ValueError(family)
    model.generation_config.pad_token_id = 0
    return model.eval()


@pytest.fixture(scope="module")
def llama():
    return tiny_target("llama")


@pytest.fixture(scope="module")
def llama_head(llama):
    torch.manual_seed(1)
    return FSPADDraftModel.from_target(llama)
