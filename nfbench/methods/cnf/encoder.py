"""The feature extractor the CNF methods share: WideResNet-50-2's stride-8/16/32 maps
(:data:`LAYERS`), reflect padding as in CFlow-AD and AD-CLSCNFs, and the frozen features of
a training or test set (the suite's shared feature cache for zero padding)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from nfbench.backbones import FeatureExtractor, get_backbone_spec
from nfbench.datasets.base import ImageSet
from nfbench.errors import check_choice
from nfbench.feature_cache import cached_features
from nfbench.progress import bars_enabled

PADDINGS = ("reflect", "zeros")
#: The three maps CFlow-AD and CLS-CNFs use (WRN50-2 layer2, layer3, layer4 = 512/1024/2048 ch).
LAYERS = ("stride8", "stride16", "stride32")


def set_padding(module: nn.Module, mode: str) -> nn.Module:
    """Switch every symmetric-padded ``nn.Conv2d`` of ``module`` to ``mode`` padding
    (CFlow-AD and AD-CLSCNFs set ``padding_mode='reflect'`` on every conv with padding > 0).
    Convolutions that pad dynamically (timm ``Conv2dSame``) keep their zero padding."""
    check_choice("padding", mode, PADDINGS)
    for conv in module.modules():
        if type(conv) is nn.Conv2d and any(p > 0 for p in conv.padding):
            conv.padding_mode = mode
    return module


def build_encoder(backbone: str, layers: Sequence[str], padding: str, trainable: bool,
                  device: torch.device, pretrained: bool = True) -> FeatureExtractor:
    """A feature extractor of ``layers`` with ``padding``; a trainable one keeps every
    BatchNorm in eval mode (ImageNet statistics) when its parent trains: call ``.eval()``.
    ``pretrained=False``: the bare architecture (profiling needs no weights)."""
    encoder = FeatureExtractor(backbone, list(layers), trainable=trainable, pretrained=pretrained)
    return set_padding(encoder, padding).to(device).eval()


@torch.no_grad()
def extract(encoder: nn.Module, images: ImageSet | torch.Tensor, device: torch.device,
            batch_size: int = 16, desc: str = "features") -> list[torch.Tensor]:
    """Feature maps of every image (``ImageSet`` or a ``[N, 3, S, S]`` tensor), CPU float32."""
    encoder.eval()
    n = len(images)
    chunks: list[list[torch.Tensor]] = []
    for start in tqdm(range(0, n, batch_size), desc=desc, leave=False,
                      disable=not bars_enabled()):
        idx = range(start, min(start + batch_size, n))
        batch = images.load_images(idx) if isinstance(images, ImageSet) else images[start:idx.stop]
        chunks.append([m.float().cpu() for m in encoder(batch.to(device))])
    return [torch.cat(parts) for parts in zip(*chunks)]


def frozen_features(backbone: str, layers: Sequence[str], padding: str, images: ImageSet,
                    device: torch.device) -> tuple[list[torch.Tensor], dict]:
    """Features of the frozen ImageNet encoder (what :func:`build_encoder` with the same
    arguments computes) and a description of their source.

    Zero padding: the suite's shared feature cache. Reflect padding (the original): computed
    with a reflect-padded extractor on every call (not stored: WideResNet maps of a large
    category take gigabytes, and one forward pass is cheap next to training)."""
    spec = get_backbone_spec(backbone)
    source = {"encoder": "frozen", "backbone": backbone, "weights": spec.weights_tag,
              "layers": list(layers), "padding": padding}
    if padding == "zeros":
        return cached_features(backbone, list(layers), images, device=device,
                               progress=bars_enabled())[0], source
    key = (backbone, tuple(layers), padding, str(device))
    if key not in _REFLECT_ENCODERS:
        _REFLECT_ENCODERS[key] = build_encoder(backbone, layers, padding, trainable=False,
                                               device=device)
    return extract(_REFLECT_ENCODERS[key], images, device,
                   desc=f"features {backbone} (reflect)"), source


_REFLECT_ENCODERS: dict[tuple, nn.Module] = {}
