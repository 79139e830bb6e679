"""Which implementation serves the tree hot paths (tree attention, greedy tree verification, KV compaction):
the Triton kernels of `hf_specdec_kernels` (sources in the repository's kernels/ folder) or plain torch.

The torch versions are the reference and the CPU path. The choice, per device:
    "auto"    (default) the kernels on CUDA devices when triton is installed, torch elsewhere
    "triton"  the kernels everywhere: on CPU they need Triton's interpreter (TRITON_INTERPRET=1 set before
              anything imports triton) and are slow; for tests and debugging
    "torch"   the torch reference everywhere
Set it with the environment variable HF_SPECDEC_KERNELS, `set_kernel_mode`, or `with kernel_mode(...)`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from contextlib import contextmanager

import torch

logger = logging.getLogger(__name__)

MODES = ("auto", "triton", "torch")
ENV_VAR = "HF_SPECDEC_KERNELS"

_mode: str | None = None
_warned_missing = False


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"Unknown kernel mode {mode!r} (from {ENV_VAR} or set_kernel_mode); choose one of {MODES}.")
    return mode


def get_kernel_mode() -> str:
    """The current mode: set_kernel_mode's, else $HF_SPECDEC_KERNELS, else "auto"."""
    return _mode if _mode is not None else _check_mode(os.environ.get(ENV_VAR, "auto") or "auto")


def set_kernel_mode(mode: str | None) -> None:
    """Choose "auto", "triton" or "torch" for this process (None: back to $HF_SPECDEC_KERNELS / "auto")."""
    global _mode
    _mode = None if mode is None else _check_mode(mode)


@contextmanager
def kernel_mode(mode: str):
    """Run a block with the given mode, then restore the previous one."""
    global _mode
    previous = _mode
    set_kernel_mode(mode)
    try:
        yield
    finally:
        _mode = previous


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None and importlib.util.find_spec("hf_specdec_kernels") is not None


def kernels_serve(device: torch.device) -> bool:
    """Whether the Triton kernels serve tensors on `device` in the current mode (raises when "triton" is forced
    where the kernels cannot run)."""
    global _warned_missing
    mode = get_kernel_mode()
    if mode == "torch":
        return False
    device = torch.device(device)
    if mode == "auto":
        if device.type != "cuda":
            return False
        if not triton_available():
            if not _warned_missing:
                logger.warning("hf_specdec: triton is not installed, so the tree hot paths run on the torch reference "
                               "on %s; `pip install triton` for the kernels.", device)
                _warned_missing = True
            return False
        return True
    if not triton_available():
        raise RuntimeError(f"{ENV_VAR}=triton, but triton (or hf_specdec_kernels) is not installed: pip install triton.")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"{ENV_VAR}=triton on a {device.type} device needs Triton's interpreter: set TRITON_INTERPRET=1 before "
            "importing hf_specdec (or use mode 'auto' / 'torch')."
        )
    return True


def kernels():
    """The kernels module (imported on first use, so that importing hf_specdec never needs triton)."""
    return importlib.import_module("hf_specdec_kernels")
