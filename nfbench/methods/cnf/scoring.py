"""Scoring with the conditional flows (CLS-CNFs Alg. 2, Eq. 4-8): the A_nf map.

Per map, the per-dimension log-likelihood ``l = log_p / C`` is shifted by a reference maximum
``u_i`` (the training-set maximum in CLS-CNFs, Eq. 4; the test-set maximum in CFlow-AD),
exponentiated (Eq. 5), upsampled bilinearly (align_corners=True, Eq. 6) and summed over maps
(Eq. 7); the anomaly map is ``n_max - N`` (Eq. 8, sign as in the original code:
``map.max() - map``).

:class:`NFMap` is the module both methods' torch models use: flows plus the training set's
``u_i`` and ``n_max``. Its ``forward`` is the inductive map (reference = training set); a
transductive score (reference = the scored set) is :meth:`NFMap.anomaly` over the whole set's
log-likelihood maps, a set-level step no per-image forward can take.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfbench.methods.cnf.flows import fibers, log_likelihood, positional_encoding_2d


@torch.no_grad()
def log_likelihood_maps(flows: nn.ModuleList, features: Sequence[Tensor], cond_dim: int,
                        device: torch.device, chunk: int = 16384) -> list[Tensor]:
    """Per map, ``log p(y) / C_i`` at every position: ``[N, h_i, w_i]`` (float64, on
    ``device``: the maps are upsampled there, :func:`normal_score_map`)."""
    out = []
    for flow, fmap in zip(flows, features):
        n, c, h, w = fmap.shape
        encoding = positional_encoding_2d(cond_dim, h, w).to(device)
        values = []
        for start in range(0, n, max(1, chunk // (h * w))):
            y, cond = fibers(fmap[start:start + max(1, chunk // (h * w))].to(device), encoding)
            z, log_jac = flow(y, c=[cond])
            values.append((log_likelihood(z, log_jac) / c).double())
        out.append(torch.cat(values).reshape(n, h, w))
    return out


def layer_maxima(log_maps: Sequence[Tensor]) -> list[float]:
    """``u_i = max_{j,k} l_{i,k}^{(j)}`` per map (Eq. 4, over whatever images are given)."""
    return [float(m.max()) for m in log_maps]


def normal_score_map(log_maps: Sequence[Tensor], maxima: Sequence[float], size: int) -> Tensor:
    """``N = sum_i upsample(exp(l_i - u_i))`` at ``size x size`` (Eq. 5-7; bilinear,
    align_corners=True as in the original code), computed on the log maps' device (the run's:
    the full-resolution maps are made there, the same float64 operations in the same order as
    on the CPU). Returns ``[N, size, size]`` float64 on the CPU."""
    total = None
    for log_map, u in zip(log_maps, maxima):
        prob = torch.exp(log_map - u)[:, None]
        up = F.interpolate(prob, size=(size, size), mode="bilinear", align_corners=True)[:, 0]
        total = up if total is None else total + up
    return total.cpu()


def anomaly_from_normal(normal: Tensor, n_max: float) -> Tensor:
    """``A_nf = n_max - N`` (Eq. 8 with the original code's sign: higher = more anomalous)."""
    return n_max - normal


def image_scores(anomaly: Tensor) -> tuple[Tensor, Tensor]:
    """``(image scores [B], anomaly)``: the image score is the maximum of its map."""
    return anomaly.flatten(1).max(dim=1).values, anomaly


class NFMap(nn.Module):
    """Features -> ``A_nf [B, S, S]`` (float64, CPU): the conditional flows with the training
    set's reference maxima ``u_i`` (Eq. 4) and ``n_max`` (Alg. 2 steps 2-1 and 2-2)."""

    def __init__(self, flows: nn.ModuleList, condition_dim: int):
        super().__init__()
        self.flows, self.condition_dim = flows, condition_dim
        self.maxima: list[float] = [0.0] * len(flows)  # u_i over the training images
        self.n_max = 0.0  # max of N over the training images

    def log_maps(self, features: Sequence[Tensor]) -> list[Tensor]:
        """:func:`log_likelihood_maps` of ``features`` (one tensor per map)."""
        device = next(self.flows.parameters()).device
        return log_likelihood_maps(self.flows, features, self.condition_dim, device)

    def calibrate(self, train_features: Sequence[Tensor], size: int) -> None:
        """``u_i`` over the training images (Eq. 4) and the training-set max of ``N``."""
        log_maps = self.log_maps(train_features)
        self.maxima = layer_maxima(log_maps)
        self.n_max = float(normal_score_map(log_maps, self.maxima, size).max())

    def anomaly(self, log_maps: Sequence[Tensor], size: int, per_layer: str = "train",
                final: str = "train") -> Tensor:
        """``A_nf [N, size, size]`` with per-map maxima from ``per_layer`` and ``n_max`` from
        ``final`` ("train" or "scored": the set of ``log_maps``, i.e. transductive)."""
        maxima = self.maxima if per_layer == "train" else layer_maxima(log_maps)
        normal = normal_score_map(log_maps, maxima, size)
        if final == "train" and per_layer == "train":
            n_max = self.n_max
        else:
            n_max = float(normal.max())
        return anomaly_from_normal(normal, n_max)

    def forward(self, features: Sequence[Tensor], size: int) -> Tensor:
        """The inductive ``A_nf`` at ``size x size``."""
        return self.anomaly(self.log_maps(features), size)

    def reference_state(self) -> dict:
        return {"train_maxima": torch.tensor(self.maxima, dtype=torch.float64),
                "train_n_max": torch.tensor(self.n_max, dtype=torch.float64)}

    def load_reference(self, state: dict) -> None:
        self.maxima = [float(v) for v in state["train_maxima"].tolist()]
        self.n_max = float(state["train_n_max"])
