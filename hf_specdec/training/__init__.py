"""Training draft heads (FS + PAD distillation). So far: the losses; the pipeline is issue 3's remaining work."""

from .losses import feature_noise, feature_regression_loss, fspad_loss, soft_label_ce_loss

__all__ = ["feature_noise", "feature_regression_loss", "fspad_loss", "soft_label_ce_loss"]
