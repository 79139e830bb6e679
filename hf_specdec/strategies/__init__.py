"""Decoding strategies reachable through `generate(strategy=...)`. Each is a transformers decoding-loop
callable: (model, input_ids, logits_processor, stopping_criteria, generation_config, **kwargs)."""

from .common import SpecDecodeOutput, SpecDecodeStats
from .fspad import fspad_generate
from .spechub import spechub_generate
from .superposed import superposed_generate

# "eagle" is the fspad engine under the name EAGLE users know: the head decides the architecture.
STRATEGIES = {"fspad": fspad_generate, "eagle": fspad_generate, "spechub": spechub_generate,
              "superposed": superposed_generate}

__all__ = ["STRATEGIES", "SpecDecodeOutput", "SpecDecodeStats", "fspad_generate", "spechub_generate", "superposed_generate"]
