"""CS-Flow's networks (pure ``nn.Module``\\ s), one eval forward from features to scores.

:class:`CSFlowModel` maps the frozen backbone's feature maps of the input at every scale
(``[B, C, h_s, w_s]`` per scale, as the shared feature cache stores them) to
``(image scores [B], anomaly map [B, S, S])``: the flow inputs of ``scale_mode``, the flow's
latents ``z``, then :meth:`CSFlowModel.score_latents` (the image score is the mean of z²/2 over
every latent entry of all scales, original train.py; the map Σ_c z² of the largest scale,
bilinearly upsampled to the input size, §3.3 / Fig. 7). ``CSFlowDetector.score`` runs
:meth:`~CSFlowModel.latents` on cached features batch by batch and
:meth:`~CSFlowModel.score_latents` on all of them.

:class:`CSFlowImageModel` composes the backbone extractor with that same model: images
``[B, 3, S, S]`` in [0, 1] → the extractor at every scale (nearest-resized inputs,
:func:`nfbench.feature_cache.scaled_inputs`) → :class:`CSFlowModel`. It is what
``inference_module`` returns for profiling.

``scale_mode`` covers the scale ablation of Table 3:

* ``cross``: CS-Flow, one flow over all scales with cross-scale convolutions;
* ``single``: one flow on the feature map of scale ``scale_index`` only;
* ``separate``: one independent single-scale flow per scale, log-likelihoods added;
* ``concat``: the maps of all scales upsampled (bilinear) to the largest and concatenated along
  channels, one single-scale flow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nfbench.feature_cache import scaled_inputs
from nfbench.methods.csflow.config import CSFlowConfig
from nfbench.methods.csflow.flow import build_cs_flow, image_score, localization_map
from nfbench.precision import autocast_subnets


class SeparateFlows(nn.Module):
    """One single-scale flow per scale; their latents and log-determinants are gathered so
    that the summed log-likelihood is the score (Table 3, "separate multi-scale")."""

    def __init__(self, flows: list[nn.Module]):
        super().__init__()
        self.flows = nn.ModuleList(flows)

    def forward(self, maps: list[torch.Tensor]):
        latents, log_jac = [], 0.0
        for flow, fmap in zip(self.flows, maps):
            z, jac = flow([fmap])
            latents.extend(z)
            log_jac = log_jac + jac
        return latents, log_jac


def flow_inputs(maps: list[torch.Tensor], scale_mode: str, scale_index: int = 0
                ) -> list[torch.Tensor]:
    """The feature maps the flow sees under ``scale_mode``."""
    if scale_mode == "single":
        return [maps[scale_index]]
    if scale_mode == "concat":
        size = maps[0].shape[-2:]
        return [torch.cat([maps[0]] + [F.interpolate(m, size=size, mode="bilinear",
                                                     align_corners=False) for m in maps[1:]],
                          dim=1)]
    return list(maps)


def build_flow(config: CSFlowConfig, shapes: list[tuple[int, int, int]]) -> nn.Module:
    """The (untrained) flow of ``config`` for flow inputs of ``shapes`` ``(C, h, w)``."""
    kwargs = dict(n_blocks=config.n_blocks, hidden=config.hidden_channels,
                  kernel_sizes=config.kernel_sizes, clamp=config.clamp)
    if config.scale_mode == "separate":
        return SeparateFlows([build_cs_flow([shape], **kwargs) for shape in shapes])
    return build_cs_flow(shapes, **kwargs)


class CSFlowModel(nn.Module):
    """Features at every scale → ``(image scores [B], anomaly map [B, S, S])``."""

    def __init__(self, config: CSFlowConfig, shapes: list[tuple[int, int, int]]):
        super().__init__()
        self.scale_mode, self.scale_index = config.scale_mode, config.scale_index
        self.image_size = config.input_size
        self.flow = autocast_subnets(build_flow(config, shapes), config.precision)  # bf16: subnets

    def inputs(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return flow_inputs(maps, self.scale_mode, self.scale_index)

    def latents(self, maps: list[torch.Tensor]):
        """``(z, log_jac)``: the flow's latents (one per flow output) of the feature maps."""
        return self.flow(self.inputs(maps))

    def score_latents(self, z: list[torch.Tensor], size: int | None = None):
        """``(image scores [B], anomaly map [B, size, size])`` of latents ``z``."""
        size = self.image_size if size is None else size
        maps = localization_map(z)[:, None]
        pixel = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        return image_score(z), pixel

    def forward(self, maps: list[torch.Tensor]):
        z, _ = self.latents(maps)
        return self.score_latents(z)


def scale_features(extractor: nn.Module, images: torch.Tensor, n_scales: int) -> list[torch.Tensor]:
    """The extractor's (single-layer) map of ``images`` at every scale."""
    return [extractor(x)[0] for x in scaled_inputs(images, n_scales)]


class CSFlowImageModel(nn.Module):
    """Images ``[B, 3, S, S]`` in [0, 1] → backbone at every scale → :class:`CSFlowModel`."""

    def __init__(self, extractor: nn.Module, model: CSFlowModel, n_scales: int):
        super().__init__()
        self.extractor, self.model, self.n_scales = extractor, model, n_scales

    def forward(self, images: torch.Tensor):
        return self.model(scale_features(self.extractor, images, self.n_scales))
