"""The shallow decoder of CLS-CNFs' pixelwise classification network (§III-B2, Fig. 2) and the
reconstruction variant of the FE_REG ablation (§IV-B).

The decoder mirrors the encoder at about a quarter of its channels (AD-CLSCNFs
``custom_models/wideresnet50_dec.py``, ``WideResNetDec([3, 6, 4, 3])``):

* a *transition block*: 1x1 conv C32 -> C32/2, ReLU, 1x1 conv C32/2 -> C32/2, ReLU, on the
  stride-32 map (WRN50-2 layer4: 2048 -> 1024 -> 1024);
* four stages of bottleneck blocks, each after a x2 bicubic upsampling (align_corners=True);
  the first two concatenate the encoder's stride-16 and stride-8 maps (skip connections from
  layer3 and layer2); widths ``scale * (C16, C8, C8/2, C8/4)``, i.e. 256/128/64/32 for WRN50-2
  at ``scale = 1/4``, with (3, 6, 4, 3) blocks;
* an *output block* after a last x2 upsampling: 3x3 conv -> 8, BatchNorm, ReLU, 3x3 conv -> the
  number of outputs, at the input resolution.

A bottleneck block is 1x1 conv -> BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 1x1 conv -> BN, plus a
(1x1 conv + BN projection) shortcut when the width changes, then ReLU. 3x3 convs use reflect
padding; convs are Kaiming-initialised, as in the original.

The classification decoder returns one logit channel: ``sigmoid(logit)`` is the defect
probability ``p`` and the soft-label cross-entropy of Eq. 1 with C = 2 classes is
``BCE(p, t)``. The reconstruction decoder (``skips=False``, 3 outputs) sees only the
stride-32 map and regresses the (normalised) input image.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect", bias=False)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck of constant ``width`` with a residual connection."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            _conv3x3(width, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width))
        self.shortcut = (nn.Identity() if in_channels == width else
                         nn.Sequential(nn.Conv2d(in_channels, width, 1, bias=False),
                                       nn.BatchNorm2d(width)))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def _stage(in_channels: int, width: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*[Bottleneck(in_channels if i == 0 else width, width)
                           for i in range(max(1, blocks))])


def decoder_widths(channels: Sequence[int], scale: float = 0.25) -> tuple[int, int, int, int]:
    """Stage widths ``scale * (C16, C8, C8/2, C8/4)`` (at least 8) for encoder channels
    ``(C8, C16, C32)``: 256/128/64/32 for WRN50-2 (512/1024/2048) at ``scale = 1/4``."""
    c8, c16 = channels[0], channels[1]
    return tuple(max(8, int(round(scale * c))) for c in (c16, c8, c8 / 2, c8 / 4))  # type: ignore


def _up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=True)


class PixelDecoder(nn.Module):
    """Decoder from the encoder maps ``[stride8, stride16, stride32]`` to ``out_channels`` maps at
    32x the stride-32 resolution (the input size).

    ``skips=True``: the pixelwise classification decoder (skip connections from the stride-16
    and stride-8 maps). ``skips=False``: the reconstruction decoder of FE_REG (same blocks,
    no skip connections).
    """

    def __init__(self, channels: Sequence[int], out_channels: int = 1, skips: bool = True,
                 blocks: Sequence[int] = (3, 6, 4, 3), width_scale: float = 0.25,
                 prior: float | None = None):
        super().__init__()
        c8, c16, c32 = channels
        self.skips = skips
        w = decoder_widths(channels, width_scale)
        mid = max(8, c32 // 2)
        self.transition = nn.Sequential(nn.Conv2d(c32, mid, 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(mid, mid, 1), nn.ReLU(inplace=True))
        self.stage1 = _stage(mid + (c16 if skips else 0), w[0], blocks[0])
        self.stage2 = _stage(w[0] + (c8 if skips else 0), w[1], blocks[1])
        self.stage3 = _stage(w[1], w[2], blocks[2])
        self.stage4 = _stage(w[2], w[3], blocks[3])
        self.output = nn.Sequential(_conv3x3(w[3], 8), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                    nn.Conv2d(8, out_channels, 3, padding=1, padding_mode="reflect"))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if prior is not None:  # start at p = prior everywhere (RetinaNet's prior initialisation)
            last = self.output[-1]
            nn.init.zeros_(last.weight)
            nn.init.constant_(last.bias, float(torch.logit(torch.tensor(prior))))

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        f8, f16, f32 = maps
        x = _up(self.transition(f32))
        x = self.stage1(torch.cat([x, f16], 1) if self.skips else x)
        x = _up(x)
        x = self.stage2(torch.cat([x, f8], 1) if self.skips else x)
        x = self.stage4(_up(self.stage3(_up(x))))
        return self.output(_up(x))


class ProbabilityHead(nn.Module):
    """``sigmoid(decoder(maps))``: the defect probability map ``A_p [B, 1, H, W]``."""

    def __init__(self, decoder: PixelDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        return torch.sigmoid(self.decoder(maps))
