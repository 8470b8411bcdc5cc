"""PatchFlow's original evaluation protocol (train.py; docs/original-code.md §1d, §4).

The original kept the epoch with the best pixel AUROC on synthetic anomalies made from 20 % of
the training images, which it also trains on. Here: that validation after every epoch, and
the test set scored once, on the selected epoch's weights."""

from __future__ import annotations

import math

import numpy as np
import torch

from nfbench import metrics
from nfbench.methods.protocol import SelectThenTest


class PatchFlowProtocol(SelectThenTest):
    """Select on synthetic-validation pixel AUROC after every epoch."""

    name = "patchflow"
    description = ("PatchFlow's train.py kept the epoch with the best pixel AUROC on synthetic "
                   "anomalies made from 20 % of the training images, which it also trains on; "
                   "here that validation after every epoch, and the test set scored once, on "
                   "the selected epoch's weights.")
    reported_as = "epoch selected on synthetic validation"
    select_on = "validation_pixel_auroc"
    selected_what = "best synthetic-validation pixel AUROC"

    def __init__(self, detector, train, tests, seed):
        super().__init__(detector, train, tests, seed)
        self._validation: tuple = None

    def module(self) -> torch.nn.Module:
        return self.detector.model_

    def final_is_honest(self, label: str) -> bool:
        """The last epoch is the run's model only without the suite's own validation (which
        may select an earlier epoch)."""
        return super().final_is_honest(label) and self.detector.config.validation == "none"

    def select_value(self, label: str, final: bool) -> float:
        """Pixel AUROC on the original's synthetic validation set (20 % of the training
        images with synthetic anomalies; those images stay in training, as in the original)."""
        det = self.detector
        if self._validation is None:
            n = len(self.train)
            n_val = max(1, int(det.config.validation_fraction * n))
            indices = sorted(np.random.default_rng(self.seed + 7).choice(n, n_val, replace=False).tolist())
            images, masks = det._validation_set(self.train, indices)
            self._validation = (det._maps(images), masks)
        maps, masks = self._validation
        value = metrics.pixel_auroc(masks, det._pixel_maps(maps)[1])
        return float(value) if math.isfinite(value) else -math.inf
