"""The draft models: the FSPAD head (and the EAGLE-2 baseline head as one of its configurations), and the
layouts other projects publish heads in (formats.py)."""

from .configuration_eagle3 import Eagle3Config
from .configuration_fspad import FSPADConfig
from .formats import load_draft, save_layout
from .modeling_eagle3 import Eagle3DraftModel
from .base import embedding_fingerprint, tokenizer_hash
from .modeling_fspad import FSPADDraftModel, FSPADOutput

__all__ = ["Eagle3Config", "Eagle3DraftModel", "FSPADConfig", "FSPADDraftModel", "FSPADOutput", "embedding_fingerprint", "load_draft", "save_layout",
           "tokenizer_hash"]
