"""The draft models: the FSPAD head (and the EAGLE-2 baseline head as one of its configurations)."""

from .configuration_fspad import FSPADConfig
from .modeling_fspad import FSPADDraftModel, FSPADOutput, embedding_fingerprint, tokenizer_hash

__all__ = ["FSPADConfig", "FSPADDraftModel", "FSPADOutput", "embedding_fingerprint", "tokenizer_hash"]
