"""Training draft heads (FS + PAD distillation).

data.py (prompts, chat template, self-distillation) -> features.py (target features in safetensors shards)
-> train.py (the training loop) -> export.py (a Hub-ready folder); losses.py holds the paper's losses.
"""

from .losses import feature_noise, feature_regression_loss, fspad_loss, soft_label_ce_loss

__all__ = ["feature_noise", "feature_regression_loss", "fspad_loss", "soft_label_ce_loss"]
