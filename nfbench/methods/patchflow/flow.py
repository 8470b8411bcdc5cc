"""The trainable core of PatchFlow (Zhang et al., AAAI-W AI2ASE 2024): feature aggregation,
adapter, flow, loss and anomaly map.

Pipeline (paper Fig. 1), after the frozen backbone:

* :func:`aggregate_features` — the feature aggregation layer P (§"Feature Aggregation",
  Eq. 2-3): each map is averaged over its f x f neighbourhood (``AvgPool2d(f, stride 1,
  padding f//2)`` as in the original code), deeper maps are upsampled bilinearly to the size of
  the shallowest map of the full-resolution input and everything is concatenated along
  channels, layers within a scale, then scales (3 x 496 = 1488 channels for B5);
* :class:`PatchFlowNet` — the adapter A (Eq. 4, one fully connected layer = 1x1 conv) followed
  by the flow F: ``flow_steps`` FrEIA ``AllInOneBlock`` couplings (RealNVP/Glow-style affine
  coupling with soft clamping, hard channel permutation and a learned global affine) whose
  internal networks have a 128-channel bottleneck (Fig. 2);
* :func:`nll_loss` — Eq. 5 per latent dimension, as the original loss.py;
* :func:`anomaly_map` — ``-exp(-mean_c z^2 / 2)`` per position (original anomaly_map.py).

The adapter is a non-invertible linear map trained jointly with the flow (the original passes
``model.parameters()`` to Adam). The NLL of its output alone is not bounded below: shrinking the
adapter by a factor a and letting the flow's global affine scale grow by 1/a leaves z unchanged
and lowers the loss by C_g log(1/a) per position. :func:`adapter_log_volume` is the term that
removes this degeneracy (see the ``adapter_training`` setting of the model config).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from FrEIA.framework import SequenceINN
from FrEIA.modules import AllInOneBlock
from torch import Tensor, nn

#: LeakyReLU slope of the coupling subnet (original model.py ``FlowBottleneck``).
LEAKY_SLOPE = 0.2
#: Value the original pads the cropped anomaly map with (anomaly_map.py ``ConstantPad2d(.., -1)``):
#: the infimum of -exp(-x), i.e. "certainly normal".
PAD_VALUE = -1.0

SUBNETS = ("code", "paper")


def aggregated_channels(layer_channels: Sequence[int], n_scales: int) -> int:
    """Channels after aggregation: every scale contributes the sum of its layers' channels
    (B5 blocks 12/19/35: 3 x (64 + 128 + 304) = 1488; Lite0: 3 x (40 + 80 + 192) = 936)."""
    return int(n_scales) * int(sum(layer_channels))


def aggregate_features(per_scale: Sequence[Sequence[Tensor]], patch_size: int = 3,
                       size: tuple[int, int] | None = None) -> Tensor:
    """The feature aggregation layer P (Eq. 2-3) on frozen backbone maps.

    ``per_scale[s][l]`` is the map of layer ``l`` (shallowest first) for input scale ``s``
    (full resolution first), ``[B, C_l, h, w]``. Each map is averaged over its ``patch_size``²
    neighbourhood (zero padding counted, as ``nn.AvgPool2d(f, 1, f // 2)``), resized with
    bilinear interpolation (``align_corners=True``, original ``GetPatchFeature``) to ``size``
    (default: the size of ``per_scale[0][0]``; the original's centre crop gives (crop // 8)²),
    and all are concatenated along channels in scale-major order.
    Returns ``[B, sum_s sum_l C_l, h0, w0]``.
    """
    if patch_size < 1 or patch_size % 2 != 1:
        raise ValueError(f"patch_size must be odd and positive (Eq. 2), got {patch_size}")
    if not per_scale or not per_scale[0]:
        raise ValueError("aggregate_features needs at least one scale with one layer")
    size = tuple(per_scale[0][0].shape[-2:]) if size is None else tuple(size)
    parts = []
    for maps in per_scale:
        for fmap in maps:
            if patch_size > 1:
                fmap = F.avg_pool2d(fmap, patch_size, stride=1, padding=patch_size // 2)
            if tuple(fmap.shape[-2:]) != size:
                fmap = F.interpolate(fmap, size=size, mode="bilinear", align_corners=True)
            parts.append(fmap)
    return torch.cat(parts, dim=1)


def subnet_constructor(kind: str = "code", hidden: int = 128) -> Callable[[int, int], nn.Module]:
    """Internal network of a coupling block, called by FrEIA as ``f(c_in, c_out)``.

    * ``code`` (original model.py ``FlowBottleneck``, anomalib alike): Conv3x3(c_in -> hidden) ->
      Conv3x3(hidden -> c_out) -> BatchNorm2d -> LeakyReLU(0.2). The two convs have no
      nonlinearity between them: the "bottleneck" is a rank-``hidden`` factorisation.
    * ``paper`` (§"Flow": "a three-layer convolutional neural network with a kernel size of 1",
      Fig. 2, bottleneck 128): Conv1x1(c_in -> hidden) -> LeakyReLU(0.2) -> Conv1x1(hidden ->
      hidden) -> LeakyReLU(0.2) -> Conv1x1(hidden -> c_out). The paper does not give the
      activations; the code's slope is used.
    """
    if kind not in SUBNETS:
        raise ValueError(f"subnet must be one of {', '.join(SUBNETS)}, got {kind!r}")

    def build(c_in: int, c_out: int) -> nn.Module:
        if kind == "code":
            return nn.Sequential(
                nn.Conv2d(c_in, hidden, kernel_size=3, padding=1),
                nn.Conv2d(hidden, c_out, kernel_size=3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.LeakyReLU(LEAKY_SLOPE),
            )
        return nn.Sequential(
            nn.Conv2d(c_in, hidden, kernel_size=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(hidden, hidden, kernel_size=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(hidden, c_out, kernel_size=1),
        )

    return build


@contextlib.contextmanager
def _numpy_seed(seed: int):
    """FrEIA draws the hard permutation of AllInOneBlock from numpy's global generator; draw it
    from ``seed`` instead and leave the caller's numpy state untouched."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def build_flow(channels: int, height: int, width: int, steps: int = 1, hidden: int = 128,
               clamp: float = 2.0, subnet: str = "code", seed: int = 0) -> SequenceINN:
    """``steps`` AllInOneBlocks on ``[channels, height, width]`` maps (original: FrEIA
    ``SequenceINN`` with ``n_blocks = flow_steps`` AllInOneBlock, FrEIA defaults: affine
    clamping 2.0, hard permutation, SOFTPLUS global affine). Block permutations come from
    ``seed``. ``z, log_jac = flow(x)``; ``x, -log_jac = flow(z, rev=True)``."""
    if steps < 1:
        raise ValueError(f"flow_steps must be >= 1, got {steps}")
    if channels < 2:
        raise ValueError(f"the flow needs at least 2 channels, got {channels}")
    flow = SequenceINN(channels, height, width)
    with _numpy_seed(seed):
        for _ in range(steps):
            flow.append(AllInOneBlock, subnet_constructor=subnet_constructor(subnet, hidden),
                        affine_clamping=clamp)
    return flow


class PatchFlowNet(nn.Module):
    """Adapter (1x1 conv, Eq. 4) followed by the flow; ``forward(fused) -> (z, log_jac)``.

    ``in_channels`` are the aggregated channels (1488 for B5), ``adapter_channels`` the adapter
    output C_g (code: 128, paper: 768), ``size`` = (h, w) of the aggregated map.
    """

    def __init__(self, in_channels: int, adapter_channels: int, size: tuple[int, int],
                 steps: int = 1, hidden: int = 128, clamp: float = 2.0, subnet: str = "code",
                 seed: int = 0):
        super().__init__()
        if adapter_channels > in_channels:
            raise ValueError(f"adapter output ({adapter_channels}) exceeds its input "
                             f"({in_channels}); the adapter reduces dimensions")
        self.adapter = nn.Conv2d(in_channels, adapter_channels, kernel_size=1)
        self.flow = build_flow(adapter_channels, int(size[0]), int(size[1]), steps, hidden, clamp,
                               subnet, seed)

    def forward(self, fused: Tensor, rev: bool = False) -> tuple[Tensor, Tensor]:
        """``(z, log_jac)`` of aggregated features ``[B, C_f, h, w]``."""
        if rev:
            raise ValueError("the adapter is not invertible; invert self.flow instead")
        z, log_jac = self.flow(self.adapter(fused))
        return z, log_jac

    def adapt_maps(self, per_scale: Sequence[Sequence[Tensor]], patch_size: int = 3,
                   size: tuple[int, int] | None = None) -> Tensor:
        """``self.adapter(aggregate_features(per_scale, patch_size, size))`` in a cheaper but
        mathematically identical order.

        The 1x1 conv acts on channels and bilinear resizing on positions, both linearly and
        resizing weights sum to one, so they commute: each pooled low-resolution map is first
        projected by its slice of the adapter weight, projections of equal size are summed,
        and only the C_g-channel sums are upsampled. Results equal the direct order up to
        float rounding; training and scoring use this order, :meth:`forward` the direct one.
        """
        if patch_size < 1 or patch_size % 2 != 1:
            raise ValueError(f"patch_size must be odd and positive (Eq. 2), got {patch_size}")
        weight = self.adapter.weight
        size = tuple(per_scale[0][0].shape[-2:]) if size is None else tuple(size)
        sums: dict[tuple[int, int], Tensor] = {}
        start = 0
        for maps in per_scale:
            for fmap in maps:
                if patch_size > 1:
                    fmap = F.avg_pool2d(fmap, patch_size, stride=1, padding=patch_size // 2)
                part = F.conv2d(fmap, weight[:, start:start + fmap.shape[1]])
                start += fmap.shape[1]
                key = tuple(part.shape[-2:])
                sums[key] = part if key not in sums else sums[key] + part
        if start != weight.shape[1]:
            raise ValueError(f"the maps have {start} channels, the adapter expects "
                             f"{weight.shape[1]}")
        out = self.adapter.bias.view(1, -1, 1, 1)
        for key, part in sums.items():
            if key != size:
                part = F.interpolate(part, size=size, mode="bilinear", align_corners=True)
            out = out + part
        return out

    def forward_maps(self, per_scale: Sequence[Sequence[Tensor]], patch_size: int = 3,
                     size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """``(z, log_jac)`` straight from the backbone maps ``[scale][layer]`` (see
        :meth:`adapt_maps`); equals ``self(aggregate_features(per_scale, patch_size, size))``."""
        z, log_jac = self.flow(self.adapt_maps(per_scale, patch_size, size))
        return z, log_jac


def nll_loss(z: Tensor, log_jac: Tensor) -> Tensor:
    """Eq. 5 per latent dimension, as the original loss.py:
    ``mean_b(0.5 * sum z^2 - log_jac) / D`` with D the latent entries per image."""
    flat = z.reshape(z.shape[0], -1)
    return torch.mean(0.5 * flat.pow(2).sum(dim=1) - log_jac) / flat.shape[1]


def adapter_log_volume(weight: Tensor) -> Tensor:
    """``0.5 * log det(W W^T)`` of the adapter's weight ``[C_g, C_f, 1, 1]`` (C_g <= C_f): the
    log of the volume by which the linear map scales its C_g-dimensional row space.

    Subtracting it per position from Eq. 5 turns the loss into the exact negative
    log-likelihood of the features' orthogonal projection onto the adapter's row space,
    measured in orthonormal coordinates of that subspace; scaling the adapter then no longer
    changes the loss, so it cannot decrease without bound by shrinking the features.
    Computed in float64 (cheap: C_g x C_g)."""
    w = weight.reshape(weight.shape[0], -1).double()
    return 0.5 * torch.linalg.slogdet(w @ w.T)[1]


def anomaly_map(z: Tensor) -> Tensor:
    """Per-position anomaly map ``[B, h, w]`` from latents ``[B, C, h, w]``: the original's
    ``-exp(-0.5 * mean_c z^2)`` (anomaly_map.py), in [-1, 0), higher = more anomalous.
    Computed in float64 so that large deviations do not underflow into ties."""
    return -torch.exp(-0.5 * z.double().pow(2).mean(dim=1))


def upsample_and_pad(maps: Tensor, crop: int, size: int) -> Tensor:
    """Anomaly maps ``[B, h, w]`` resized bilinearly (``align_corners=True``, original
    anomaly_map.py) to ``crop``² and, when ``crop < size``, padded evenly with
    :data:`PAD_VALUE` (the lowest possible score) to ``size``² as the original does."""
    out = F.interpolate(maps[:, None], size=(crop, crop), mode="bilinear", align_corners=True)
    if crop < size:
        before = (size - crop) // 2
        after = size - crop - before
        out = F.pad(out, (before, after, before, after), mode="constant", value=PAD_VALUE)
    return out[:, 0]


__all__ = ["aggregated_channels", "aggregate_features", "subnet_constructor", "build_flow",
           "PatchFlowNet", "nll_loss", "adapter_log_volume", "anomaly_map", "upsample_and_pad",
           "PAD_VALUE", "SUBNETS"]
