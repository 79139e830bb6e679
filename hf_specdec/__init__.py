"""hf_specdec: lossless speculative decoding inside `transformers.generate`.

    import hf_specdec
    target, tok = hf_specdec.default_target()
    draft = hf_specdec.default_draft(target, tok)          # the shipped, trained FSPAD head
    out = target.generate(ids, assistant_model=draft, strategy="fspad", max_new_tokens=128)

Importing the package registers the FSPAD model type with the Auto classes and installs the generate hook
(`uninstall_generate_hook()` removes it; `custom_generate=hf_specdec.fspad_generate` works without it).
"""

from pathlib import Path

from transformers import AutoConfig, AutoModel

from .accel import get_kernel_mode, kernel_mode, set_kernel_mode
from .default_model import default_target, default_target_path
from .draft import Eagle3Config, Eagle3DraftModel, FSPADConfig, FSPADDraftModel, load_draft
from .heads import default_baseline_draft, default_draft
from .hook import install_generate_hook, specdec_generate, uninstall_generate_hook
from .ngram import NgramTable
from .strategies import (
    STRATEGIES,
    SpecDecodeOutput,
    SpecDecodeStats,
    fspad_generate,
    spechub_generate,
    superposed_generate,
)
from .tree import TREE_ATTENTION, register_tree_attention

__version__ = "0.1.0"

# A folder usable as `generate(custom_generate=CUSTOM_GENERATE_DIR, trust_remote_code=True, strategy=...)`.
CUSTOM_GENERATE_DIR = str(Path(__file__).parent / "hub")

AutoConfig.register(FSPADConfig.model_type, FSPADConfig, exist_ok=True)
AutoModel.register(FSPADConfig, FSPADDraftModel, exist_ok=True)
AutoConfig.register(Eagle3Config.model_type, Eagle3Config, exist_ok=True)
AutoModel.register(Eagle3Config, Eagle3DraftModel, exist_ok=True)
install_generate_hook()
register_tree_attention()  # attn_implementation="hf_specdec_tree"

__all__ = [
    "CUSTOM_GENERATE_DIR",
    "Eagle3Config",
    "Eagle3DraftModel",
    "FSPADConfig",
    "FSPADDraftModel",
    "NgramTable",
    "TREE_ATTENTION",
    "get_kernel_mode",
    "kernel_mode",
    "set_kernel_mode",
    "STRATEGIES",
    "SpecDecodeOutput",
    "SpecDecodeStats",
    "default_baseline_draft",
    "default_draft",
    "default_target",
    "default_target_path",
    "fspad_generate",
    "install_generate_hook",
    "load_draft",
    "specdec_generate",
    "spechub_generate",
    "superposed_generate",
    "uninstall_generate_hook",
]
