"""Losses for long-tailed recognition: BCL / SupCon contrastive losses and classification losses."""

from bcl.losses.contrastive import BalancedSupCon, SupConLoss, balanced_supcon_loss, supcon_loss
from bcl.losses.long_tail import (
    FocalLoss,
    LogitAdjustedLoss,
    class_balanced_weights,
    class_priors,
    focal_loss,
    logit_adjusted_loss,
)

__all__ = [
    "BalancedSupCon",
    "SupConLoss",
    "balanced_supcon_loss",
    "supcon_loss",
    "LogitAdjustedLoss",
    "FocalLoss",
    "logit_adjusted_loss",
    "focal_loss",
    "class_priors",
    "class_balanced_weights",
]
