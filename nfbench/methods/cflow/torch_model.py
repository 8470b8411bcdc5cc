"""CFlow-AD's network: encoder -> one conditional flow per map -> A_nf (Alg. 2)."""

from __future__ import annotations

import torch
from torch import nn

from nfbench.methods.cnf.scoring import NFMap, image_scores


class CFlowModel(nn.Module):
    """Images ``[B, 3, S, S]`` in [0, 1] -> ``(image scores [B], A_nf [B, S, S])``, with the
    training set's reference maxima (the inductive map; for the transductive one the
    detector takes the maxima over the scored set, see :class:`~.detector.CFlowDetector`)."""

    def __init__(self, encoder: nn.Module, nf: NFMap):
        super().__init__()
        self.encoder, self.nf = encoder, nf

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image_scores(self.nf(self.encoder(images), images.shape[-1]))
