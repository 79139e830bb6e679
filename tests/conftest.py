"""Tiny random targets and draft heads shared by the tests."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import hf_specdec
from hf_specdec import FSPADDraftModel

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


class OracleHead(FSPADDraftModel):
    """A "cheating" head: at head position t it proposes reference[t + 2] (the target's own continuation),
    with probability `accuracy`, else a random token. Tests long accepted paths, EOS and max_new_tokens
    inside a path, and the cache bookkeeping under many acceptances."""

    def set_reference(self, reference: torch.Tensor, accuracy: float = 1.0, seed: int = 0):
        self.reference = reference[0]
        self.accuracy = accuracy
        self.oracle_gen = torch.Generator().manual_seed(seed)
        return self

    def forward(self, input_ids=None, features=None, position_ids=None, **kwargs):
        out = super().forward(input_ids=input_ids, features=features, position_ids=position_ids, **kwargs)
        self._last_positions = position_ids.expand(input_ids.shape)
        return out

    def compute_logits(self, hidden_states):
        logits = super().compute_logits(hidden_states).float()
        positions = self._last_positions[..., -hidden_states.shape[-2]:] if hidden_states.dim() == 3 \
            else self._last_positions[..., -1]
        idx = (positions + 2).clamp(max=len(self.reference) - 1)
        want = self.reference[idx]
        hit = torch.rand(want.shape, generator=self.oracle_gen) < self.accuracy
        want = torch.where(hit, want, torch.randint(0, logits.shape[-1], want.shape, generator=self.oracle_gen))
        return logits.scatter(-1, want[..., None], 1e4)


def oracle_head(target, reference, accuracy=1.0, seed=0) -> OracleHead:
    head = OracleHead(FSPADDraftModel.from_target(target).config).to(target.dtype).eval()
    head.attach_target(target)
    return head.set_reference(reference, accuracy, seed)


@pytest.fixture(scope="module")
def llama():
    return tiny_target("llama")


@pytest.fixture(scope="module")
def llama_head(llama):
    torch.manual_seed(1)
    return FSPADDraftModel.from_target(llama)
