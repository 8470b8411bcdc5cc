"""PatchFlow's networks (pure ``nn.Module``\\ s), one eval forward from features to scores.

:class:`PatchFlowModel` maps the frozen backbone's maps ``[scale][layer]`` (scale 0 the whole
image, scale s the whole image resized, nearest, to ``crop // 2**s``; as the shared feature
cache stores them) to ``(image scores [B], anomaly map [B, S, S])``: patch aggregation (3x3
average pooling, bilinear resizing to the map size) and the 1x1 adapter, in the cheap,
equivalent order of :meth:`PatchFlowNet.adapt_maps <.flow.PatchFlowNet.adapt_maps>`, then the
flow's latents ``z`` (:meth:`~PatchFlowModel.latents`) and :meth:`~PatchFlowModel.score_latents`:
the map ``-exp(-mean_c z^2 / 2)`` resized bilinearly to crop² and padded with -1 to the input
size, the image score its maximum. ``PatchFlowDetector.score`` runs it on cached features batch
by batch (latents on the device, scores on the CPU).

:class:`PatchFlowImageModel` composes the backbone extractor at every scale
(:func:`nfbench.feature_cache.scaled_inputs`) with that same model: images ``[B, 3, S, S]`` in
[0, 1] → scores; ``inference_module`` returns it for profiling.
"""

from __future__ import annotations

import torch
from torch import nn

from nfbench.feature_cache import scaled_inputs
from nfbench.methods.patchflow import flow as pf


class PatchFlowModel(nn.Module):
    """Backbone maps ``[scale][layer]`` → ``(image scores [B], anomaly map [B, S, S])``.

    ``net`` is the adapter + flow (:class:`~.flow.PatchFlowNet`); ``map_size`` the side of the
    aggregated map (None: the stride-8 map of the whole input); ``crop`` the side of the
    central square the map fills in the ``image_size`` output."""

    def __init__(self, net: pf.PatchFlowNet, patch_size: int, map_size: tuple[int, int] | None,
                 crop: int, image_size: int):
        super().__init__()
        self.net = net
        self.patch_size, self.map_size = patch_size, map_size
        self.crop, self.image_size = crop, image_size

    def latents(self, maps):
        """``(z [B, C_g, h, w], log_jac [B])`` of the backbone maps."""
        return self.net.forward_maps(maps, self.patch_size, self.map_size)

    def score_latents(self, z: torch.Tensor):
        """``(image scores [B], anomaly map [B, S, S])`` (float64) of latents ``z``."""
        full = pf.upsample_and_pad(pf.anomaly_map(z), self.crop, self.image_size)
        return full.amax(dim=(1, 2)), full  # image score: max of the map (paper)

    def forward(self, maps):
        z, _ = self.latents(maps)
        return self.score_latents(z)


def scale_features(extractor: nn.Module, images: torch.Tensor, n_scales: int, crop: int):
    """The extractor's maps ``[scale][layer]`` of ``images``."""
    return [extractor(x) for x in scaled_inputs(images, n_scales, crop)]


class PatchFlowImageModel(nn.Module):
    """Images ``[B, 3, S, S]`` in [0, 1] → backbone at every scale → :class:`PatchFlowModel`."""

    def __init__(self, extractor: nn.Module, model: PatchFlowModel, n_scales: int):
        super().__init__()
        self.extractor, self.model, self.n_scales = extractor, model, n_scales

    def forward(self, images: torch.Tensor):
        return self.model(scale_features(self.extractor, images, self.n_scales, self.model.crop))
