"""CLS-CNFs' networks (Alg. 2, Table 3): the fine-tuned encoder with the classification
decoder's defect probability ``A_p``, the conditional flows' ``A_nf`` on the fine-tuned
(sFE) or the frozen ImageNet (nsFE, FE_PRE) encoder's maps, and ``A = A_nf + w A_p`` (Eq. 9)."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from nfbench.methods.clscnf.decoder import PixelDecoder, ProbabilityHead
from nfbench.methods.cnf.scoring import NFMap, image_scores


class CLSCNFModel(nn.Module):
    """Images ``[B, 3, S, S]`` in [0, 1] -> ``(image scores [B], map [B, S, S])`` of the map
    ``score_map`` (``joint`` A, ``nf`` A_nf, ``cls`` A_p), float64 on the CPU.

    ``encoder``: the fine-tuned encoder (None: FE_PRE-CNFs); ``decoder``: the classification
    decoder (only when the map needs A_p); ``nf``: the flows with the training-set maxima
    (None for ``cls``). ``shared``: the flows read ``encoder``'s maps (CLS-CNFs-sFE, one
    encoder pass), else those of ``nf_encoder``, the frozen ImageNet encoder (CLS-CNFs-nsFE),
    which a caller that brings those features itself (the detector's ``score``) may leave out.
    ``A_nf`` uses the training-set ``n_max`` (inductive; the detector's transductive score
    takes it over the scored set)."""

    def __init__(self, score_map: str, encoder: nn.Module | None = None,
                 decoder: PixelDecoder | None = None, nf: NFMap | None = None,
                 shared: bool = True, nf_encoder: nn.Module | None = None, w: float = 1.0):
        super().__init__()
        self.score_map, self.shared, self.w = score_map, shared, w
        self.encoder, self.nf, self.nf_encoder = encoder, nf, nf_encoder
        self.head = ProbabilityHead(decoder) if decoder is not None else None

    def encode(self, images: Tensor) -> tuple[list[Tensor] | None, Tensor | None]:
        """One pass of the fine-tuned encoder: its maps if the flows read them (else None)
        and ``A_p [B, S, S]`` (float64, CPU) if there is a decoder (else None)."""
        if self.encoder is None:
            return None, None
        maps = self.encoder(images)
        probs = self.head(maps)[:, 0].double().cpu() if self.head is not None else None
        return (maps if self.nf is not None and self.shared else None), probs

    @property
    def runs_encoder(self) -> bool:
        """Whether :meth:`encode` has anything to compute."""
        return self.encoder is not None and (self.head is not None
                                             or (self.nf is not None and self.shared))

    def combine(self, maps: dict[str, Tensor]) -> Tensor:
        """The configured map from ``{"nf": A_nf, "cls": A_p}``."""
        if self.score_map == "joint":
            return maps["nf"] + self.w * maps["cls"]  # Eq. 9
        return maps[self.score_map]

    def nf_features(self, images: Tensor, shared_maps: Sequence[Tensor] | None) -> list[Tensor]:
        if shared_maps is not None:
            return list(shared_maps)
        if self.nf_encoder is None:
            raise RuntimeError("CLSCNFModel: the flows' encoder (nf_encoder) is missing")
        return self.nf_encoder(images)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        shared_maps, probs = self.encode(images)
        maps: dict[str, Tensor] = {}
        if probs is not None:
            maps["cls"] = probs
        if self.nf is not None:
            maps["nf"] = self.nf(self.nf_features(images, shared_maps), images.shape[-1])
        return image_scores(self.combine(maps))
