"""PatchFlow (Zhang, Yang, Wang, Vian; AAAI-W AI2ASE 2024) behind the Detector protocol.

Frozen EfficientNet-B5 blocks 12, 19 and 35 (64/128/304 channels at strides 8/16/32) are read
for the input at 3 scales from the shared feature cache: scale 0 is the whole image, scales 1
and 2 the whole image resized (nearest, as in the original) to ``crop // 2**s``. Per batch, the
cached maps are aggregated (3x3 average pooling, bilinear resizing to ``(crop // 8)²``,
concatenation: 3 x 496 = 1488 channels, 84x84 at the original code's crop 672 of 768, 96x96
without a crop), reduced by the adapter (one 1x1 conv) and mapped by a one-step AllInOneBlock
flow to Gaussian latents z, trained with Eq. 5. The anomaly map is ``-exp(-mean_c z^2 / 2)``
resized bilinearly to crop² and padded with -1 to the input size (the original's "crop" is
this spatial squeeze of a map of the whole image into its centre, not a cut before the
backbone); the image score is its maximum.

Every default is the paper's where it states one and the original code's
(github.com/BOX-LEO/PatchFlow, see reference/original-code.md §1d) where it does not or where
the two disagree; each field names its source. Deviations are listed in
``benchmarks/patchflow.yaml``.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn
from tqdm.auto import tqdm

from nfbench.datasets.base import ImageSet
from nfbench.errors import UserError
from nfbench.feature_cache import cached_features, get_extractor, scaled_inputs
from nfbench.methods import register_method
from nfbench.progress import bars_enabled
from nfbench.methods.base import Scores, descent_step, resolve_device
from nfbench.methods.patchflow import flow as pf

#: Adapter output channels C_g per ``adapter`` choice.
ADAPTERS = {
    "code": 128,  # original model.py FeatureAdaptor: 1x1 conv 1488 -> 128 (= flow_feature_dim)
    "paper": 768,  # paper §Implementation Detail: "decrease the feature size to 768x96x96"
}
#: How the adapter is trained.
ADAPTER_TRAINING = ("volume", "plain", "frozen")
VALIDATIONS = ("none", "synthetic")


@dataclass(frozen=True)
class PatchFlowConfig:
    """Defaults are the paper's MVTec AD setting completed by the original code."""

    backbone: str = "efficientnet_b5"  # §Implementation Detail: EfficientNet-B5, frozen
    layers: tuple[str, ...] = ("stride8", "stride16", "stride32")  # blocks 12, 19, 35 (0-based)
    n_scales: int = 3  # §Feature Aggregation "three scales" (Table 4: 3, 2, 1)
    patch_size: int = 3  # Eq. 2 f; code GetPatchFeature AvgPool2d(3, stride 1, padding 1)
    input_size: int = 768  # §Implementation Detail: 768x768 (code data.py Resize(768, 768))
    # code (model.py PatchflowModel crop_size=(672, 672)): the backbone sees the WHOLE 768
    # image at scale 0 and the whole image resized (nearest) to 672 // 2**s at scales 1, 2;
    # every map is resized to (672 // 8)² = 84², the 84² anomaly map squeezed into the central
    # 672² of the output and padded with -1. 0 or null = no crop (paper text: 96x96 maps)
    crop_size: int | None = 672
    adapter: str = "code"  # code: 1x1 conv -> 128 | paper: 1x1 conv -> 768 (§Impl. Detail)
    # The adapter is trained jointly with the flow (code: Adam over model.parameters()).
    # plain: Eq. 5 only, as paper and code (the default: it made the published numbers);
    # volume: Eq. 5 minus the adapter's log-volume 0.5 log det(W W^T) per position = exact NLL
    # of the features' projection onto the adapter's row space. Eq. 5 alone is unbounded
    # below (shrink the adapter, let the flow rescale); volume removes that, but cost about
    # 0.7 AUROC points on real MVTec AD transistor (issue 11); frozen: adapter at random init.
    adapter_training: str = "plain"
    subnet: str = "code"  # code: conv3x3 -> conv3x3 -> BN -> LeakyReLU | paper: three 1x1 convs
    flow_steps: int = 1  # §Ablation, Table 3: 1 step is best (code flow_steps=1)
    hidden: int = 128  # §Impl. Detail: "bottleneck dimension of the flow is fixed at 128"
    clamp: float = 2.0  # FrEIA AllInOneBlock default affine_clamping, used by the code
    lr: float = 1e-3  # code train.py Adam (paper silent)
    weight_decay: float = 1e-4  # code train.py
    batch_size: int = 16  # code data.py / main.py
    epochs: int = 10  # code main.py
    # none: the last epoch | synthetic: the epoch with the best pixel AUROC on synthetic
    # anomalies made from held-out TRAIN images (code gen_validation_set.py + train.py)
    validation: str = "none"
    validation_fraction: float = 0.2  # code gen_validation_set.py: 20 % of the train images
    device: str = "auto"


# --------------------------------------------------------------------------------------------
# image sources for the feature cache (duck-typed like ImageSet: name, paths, size,
# fingerprint, __len__, load_images)
# --------------------------------------------------------------------------------------------

class _DerivedImages:
    """Images computed from another source (synthetic anomalies), with a fingerprint that names the derivation so the feature cache keys them correctly."""

    def __init__(self, name: str, paths: Sequence[str], size: int, fingerprint: str,
                 load: Callable[[Sequence[int]], torch.Tensor]):
        self.name = name
        self.paths = tuple(paths)
        self.size = int(size)
        self.fingerprint = fingerprint
        self._load = load

    def __len__(self) -> int:
        return len(self.paths)

    def load_images(self, indices: Sequence[int] | None = None) -> torch.Tensor:
        return self._load(range(len(self)) if indices is None else indices)


def _tensor_images(name: str, paths: Sequence[str], images: torch.Tensor) -> _DerivedImages:
    array = images.detach().cpu().float().contiguous().numpy()
    digest = hashlib.sha1(f"tensor;{array.shape}".encode() + array.tobytes()).hexdigest()
    return _DerivedImages(name, paths, images.shape[-1], digest,
                          lambda idx: images[list(idx)].clone())


# --------------------------------------------------------------------------------------------
# synthetic validation anomalies (after the original gen_validation_set.py)
# --------------------------------------------------------------------------------------------

def _perlin(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise with ``res`` cells per axis; ``shape`` divisible by ``res``."""
    cells_y, cells_x = res
    step_y, step_x = shape[0] // cells_y, shape[1] // cells_x
    ys = (np.arange(shape[0]) / step_y) % 1.0
    xs = (np.arange(shape[1]) / step_x) % 1.0
    fy, fx = np.meshgrid(ys, xs, indexing="ij")
    angles = 2 * np.pi * rng.random((cells_y + 1, cells_x + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grads[dy:dy + cells_y, dx:dx + cells_x]
        g = np.repeat(np.repeat(g, step_y, axis=0), step_x, axis=1)
        return (fy - dy) * g[..., 0] + (fx - dx) * g[..., 1]

    fade = lambda t: t * t * t * (t * (t * 6 - 15) + 10)
    ty, tx = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - tx) + corner(0, 1) * tx
    bottom = corner(1, 0) * (1 - tx) + corner(1, 1) * tx
    return math.sqrt(2) * (top * (1 - ty) + bottom * ty)


def _perlin_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """Thresholded Perlin noise (scales 2^0..2^5 per axis, rotated ±90°, threshold 0.6-0.7)."""
    res = (2 ** int(rng.integers(0, 6)), 2 ** int(rng.integers(0, 6)))
    padded = int(math.ceil(size / 32) * 32)
    noise = _perlin((padded, padded), res, rng)[:size, :size]
    noise = ndi.rotate(noise, float(rng.uniform(-90, 90)), reshape=False, order=1,
                       mode="constant", cval=0.0)
    return noise > rng.uniform(0.6, 0.7)


def _disk(radius: int) -> np.ndarray:
    r = max(int(radius), 1)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return yy ** 2 + xx ** 2 <= r * r


def _blob_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blobs: blurred uniform noise (sigma 15 px at 768), stretched to 0-255,
    thresholded at 195-199, then opened and closed with a disk (9 px at 768)."""
    scale = size / 768
    noise = rng.integers(0, 256, (size, size)).astype(np.float64)
    blur = ndi.gaussian_filter(noise, sigma=max(15 * scale, 1.0), mode="mirror")
    stretch = (blur - blur.min()) / max(blur.max() - blur.min(), 1e-12) * 255
    mask = stretch > int(rng.integers(195, 200))
    disk = _disk(round(4 * scale))
    mask = ndi.binary_opening(mask, structure=disk)
    return ndi.binary_closing(mask, structure=disk)


def _augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Three distinct random photometric/geometric changes of an ``[H, W, 3]`` image in [0, 1]
    (the original draws 3 of 10 imgaug augmenters; the same kinds are reimplemented here)."""
    def gamma(x):
        return np.clip(x, 0, 1) ** rng.uniform(0.5, 2.0, size=3)

    def brightness(x):
        return x * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30) / 255

    def sharpness(x):
        return x + rng.uniform(0.5, 2.0) * (x - ndi.gaussian_filter(x, sigma=(1, 1, 0)))

    def saturation(x):
        gray = x.mean(axis=2, keepdims=True)
        return gray + rng.uniform(0.0, 2.0) * (x - gray) + rng.uniform(-0.2, 0.2, size=3)

    def solarize(x):
        return np.where(x > rng.uniform(32, 128) / 255, 1 - x, x) if rng.random() < 0.5 else x

    def posterize(x):
        levels = 2 ** int(rng.integers(1, 9))
        return np.floor(np.clip(x, 0, 1) * (levels - 1) + 0.5) / (levels - 1)

    def invert(x):
        return 1 - x

    def autocontrast(x):
        lo, hi = x.min(axis=(0, 1)), x.max(axis=(0, 1))
        return (x - lo) / np.maximum(hi - lo, 1e-6)

    def equalize(x):
        out = np.empty_like(x)
        for c in range(x.shape[2]):
            ranks = np.argsort(np.argsort(x[..., c], axis=None), axis=None)
            out[..., c] = (ranks / max(ranks.size - 1, 1)).reshape(x.shape[:2])
        return out

    def rotate(x):
        return ndi.rotate(x, float(rng.uniform(-45, 45)), axes=(0, 1), reshape=False, order=1,
                          mode="constant", cval=0.0)

    ops = [gamma, brightness, sharpness, saturation, solarize, posterize, invert, autocontrast,
           equalize, rotate]
    out = image.astype(np.float64)
    for k in rng.choice(len(ops), size=3, replace=False):
        out = np.clip(ops[k](out), 0.0, 1.0)
    return out


def _shuffled_patches(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """25 random square patches (400 px at 768) each replaced by the next one's content."""
    size = image.shape[0]
    patch = max(1, round(400 * size / 768))
    out = image.copy()
    corners = [(int(rng.integers(0, max(size - patch, 1))), int(rng.integers(0, max(size - patch, 1))))
               for _ in range(25)]
    contents = [image[y:y + patch, x:x + patch].copy() for y, x in corners]
    for i, (y, x) in enumerate(corners):
        out[y:y + patch, x:x + patch] = contents[(i + 1) % len(contents)]
    return out


#: Accepted defect area, as a fraction of the image. The original (gen_validation_set.py) loops
#: ``while np.sum(mask) < 0.1*H*W or np.sum(mask) > 0.5*H*W`` on a 0/255 uint8 mask, so it
#: accepts 0.1/255 .. 0.5/255 of the area (0.04-0.2 %: small defects), not the 10-50 % the
#: expression suggests, which its blob and Perlin generators practically never reach. We keep
#: the range the original actually produced.
VALIDATION_AREA = (0.1 / 255, 0.5 / 255)


def synthetic_anomaly(image: np.ndarray, rng: np.random.Generator, max_tries: int = 300
                      ) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic defect on a normal ``[H, W, 3]`` image in [0, 1] (after the original
    gen_validation_set.py): a Gaussian-blob or Perlin mask (drawn again until its area is in
    :data:`VALIDATION_AREA`; after ``max_tries`` the non-empty draw nearest to that range is
    kept) filled with shuffled patches of an augmented copy, blended with transparency
    U(0.15, 1). Returns (image, bool mask). The original also restricts the mask to a
    per-category foreground (gray-level threshold); that needs category knowledge and is left
    out."""
    size = image.shape[0]
    low, high = VALIDATION_AREA
    mask, best = None, math.inf
    for _ in range(max_tries):
        candidate = _blob_mask(size, rng) if rng.integers(2) else _perlin_mask(size, rng)
        area = candidate.mean()
        if area == 0:
            continue
        distance = max(low - area, area - high, 0.0)
        if distance < best:
            mask, best = candidate, distance
        if distance == 0.0:
            break
    if mask is None:  # every draw empty (practically impossible): one centred square
        mask = np.zeros((size, size), dtype=bool)
        side = max(1, round(size * math.sqrt(low)))
        mask[(size - side) // 2:(size + side) // 2, (size - side) // 2:(size + side) // 2] = True
    source = _shuffled_patches(_augment(image, rng), rng)
    factor = rng.uniform(0.15, 1.0)
    blended = np.where(mask[..., None], factor * source + (1 - factor) * image, image)
    return blended.astype(np.float32), mask


# --------------------------------------------------------------------------------------------
# the detector
# --------------------------------------------------------------------------------------------

@register_method("patchflow")
class PatchFlowDetector:
    """PatchFlow: patch-aggregated multi-scale features, an adapter and a one-step flow."""

    Config = PatchFlowConfig
    #: settings for a seconds-long run (conformance tests, CI smoke)
    smoke_settings = {"backbone": "efficientnet_lite0", "input_size": 128, "crop_size": 0,
                      "hidden": 16, "epochs": 2, "batch_size": 8}

    def __init__(self, config: PatchFlowConfig = PatchFlowConfig()):
        checks = [("adapter", config.adapter, tuple(ADAPTERS)),
                  ("adapter_training", config.adapter_training, ADAPTER_TRAINING),
                  ("subnet", config.subnet, pf.SUBNETS), ("validation", config.validation,
                                                          VALIDATIONS)]
        for key, value, valid in checks:
            if value not in valid:
                raise UserError(f"{key} must be one of {', '.join(valid)}, got {value!r}")
        if config.n_scales < 1:
            raise UserError(f"n_scales must be >= 1, got {config.n_scales}")
        if config.patch_size < 1 or config.patch_size % 2 != 1:
            raise UserError(f"patch_size must be an odd positive number, got {config.patch_size}")
        if config.crop_size and not 8 <= config.crop_size <= config.input_size:
            raise UserError(f"crop_size must be in 8..input_size ({config.input_size}) or 0, "
                            f"got {config.crop_size}")
        if config.flow_steps < 1 or config.epochs < 1 or config.batch_size < 1:
            raise UserError("flow_steps, epochs and batch_size must be >= 1")
        if not 0.0 < config.validation_fraction < 1.0:
            raise UserError(f"validation_fraction must be in (0, 1), got "
                            f"{config.validation_fraction}")
        self.config = config
        self.device = resolve_device(config.device)
        self.net: pf.PatchFlowNet | None = None
        self._shape: tuple[int, int, int] | None = None  # (aggregated C, h, w)
        self.loss_history: list[float] = []
        self.validation_history: list[float] = []
        self.selected_epoch: int | None = None
        self.fit_indices: list[int] = []
        self.validation_indices: list[int] = []

    # -- sizes --------------------------------------------------------------------------
    @property
    def crop(self) -> int:
        """Side of the central square the anomaly map fills (the input size when not
        cropping); also the base side of the smaller input scales (``crop // 2**s``)."""
        cfg = self.config
        return int(cfg.crop_size) if cfg.crop_size else int(cfg.input_size)

    @property
    def map_size(self) -> tuple[int, int] | None:
        """Side of the aggregated map: ``(crop // 8)²`` when cropping (original
        GetPatchFeature), else None = the stride-8 map of the whole input (paper)."""
        return None if self.crop >= self.config.input_size else (self.crop // 8,) * 2

    @property
    def adapter_channels(self) -> int:
        return ADAPTERS[self.config.adapter]

    # -- features -----------------------------------------------------------------------
    def _maps(self, images) -> list[list[torch.Tensor]]:
        """Frozen-backbone maps ``[scale][layer]`` (CPU) of the whole images (scale 0) and of
        the whole images resized to ``crop // 2**s`` (s > 0), from the shared cache (one entry
        per layer and scale, so the scale ablation and the other methods tapping the same
        roles reuse them; scale 0 is always shared)."""
        cfg = self.config
        return cached_features(cfg.backbone, list(cfg.layers), images, n_scales=cfg.n_scales,
                               device=self.device,
                               progress=bars_enabled(),
                               base_size=self.crop if self.map_size else None)

    def _batch(self, maps: list[list[torch.Tensor]], index) -> list[list[torch.Tensor]]:
        """The cached maps of the images at ``index``, on the device."""
        return [[m[index].to(self.device) for m in layer_maps] for layer_maps in maps]

    def _forward(self, maps: list[list[torch.Tensor]], index):
        """(z, log_jac) of the images at ``index``: aggregation + adapter (in the cheap,
        equivalent order of PatchFlowNet.adapt_maps) + flow."""
        return self.net.forward_maps(self._batch(maps, index), self.config.patch_size,
                                     self.map_size)

    def _build_net(self, shape: tuple[int, int, int], seed: int = 0) -> pf.PatchFlowNet:
        cfg = self.config
        channels, height, width = shape
        if self.adapter_channels > channels:
            raise UserError(f"adapter={cfg.adapter!r} outputs {self.adapter_channels} channels "
                            f"but the aggregated features have only {channels}")
        return pf.PatchFlowNet(channels, self.adapter_channels, (height, width), cfg.flow_steps,
                               cfg.hidden, cfg.clamp, cfg.subnet, seed).to(self.device)

    def _loss(self, maps: list[list[torch.Tensor]], index) -> torch.Tensor:
        z, log_jac = self._forward(maps, index)
        loss = pf.nll_loss(z, log_jac)
        if self.config.adapter_training == "volume":
            # per position, divided by C_g like Eq. 5's other terms (D = C_g h w)
            volume = pf.adapter_log_volume(self.net.adapter.weight) / z.shape[1]
            loss = loss - volume.to(loss.dtype)
        return loss

    # -- validation split ---------------------------------------------------------------
    def _split(self, train: ImageSet) -> tuple[list[int], list[int]]:
        n = len(train)
        if self.config.validation == "none":
            return list(range(n)), []
        n_val = max(1, int(self.config.validation_fraction * n))
        if n - n_val < 1:
            raise UserError(f"validation=synthetic needs at least 2 training images, got {n}")
        rng = np.random.default_rng(int(torch.initial_seed()) % 2**63)
        held_out = sorted(rng.choice(n, size=n_val, replace=False).tolist())
        chosen = set(held_out)
        return [i for i in range(n) if i not in chosen], held_out

    def _validation_set(self, train: ImageSet, indices: list[int]):
        """Synthetic anomalies made from the held-out train images: (image source, masks)."""
        rng = np.random.default_rng((int(torch.initial_seed()) + 1) % 2**63)
        clean = train.load_images(indices)
        images, masks = [], []
        for image in clean:
            defect, mask = synthetic_anomaly(image.permute(1, 2, 0).numpy().astype(np.float64), rng)
            images.append(torch.from_numpy(defect).permute(2, 0, 1))
            masks.append(mask)
        paths = [f"synthetic:{train.paths[i]}" for i in indices]
        name = f"{train.name}/patchflow-validation".lstrip("/")
        return _tensor_images(name, paths, torch.stack(images)), np.stack(masks)

    # -- Detector protocol --------------------------------------------------------------
    def fit(self, train: ImageSet, evaluate: Callable[[str], None] | None = None
            ) -> "PatchFlowDetector":
        """``evaluate(label)``, if given, is called after every epoch (the original's
        selection points, nfbench.protocols); it must not change the model."""
        from nfbench.metrics import pixel_auroc

        cfg = self.config
        self.fit_indices, self.validation_indices = self._split(train)
        fit_set = train if not self.validation_indices else train.subset(self.fit_indices)
        maps = self._maps(fit_set)
        validation = None
        if self.validation_indices:
            val_images, val_masks = self._validation_set(train, self.validation_indices)
            validation = (self._maps(val_images), val_masks)

        first = maps[0][0]
        self._shape = (sum(m.shape[1] for layer_maps in maps for m in layer_maps),
                       *(self.map_size or (int(first.shape[-2]), int(first.shape[-1]))))
        flow_seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        self.net = self._build_net(self._shape, seed=flow_seed)
        if cfg.adapter_training == "frozen":
            self.net.adapter.requires_grad_(False)
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        n = first.shape[0]
        generator = torch.Generator().manual_seed(int(torch.initial_seed()) % 2**63)
        self.loss_history, self.validation_history = [], []
        self.selected_epoch = None
        best_score, best_state = -math.inf, None
        bar = tqdm(range(cfg.epochs), desc="patchflow fit", leave=False,
                   disable=not bars_enabled())
        for epoch in bar:
            self.net.train()
            order = torch.randperm(n, generator=generator)  # shuffle=True, drop_last=False
            epoch_losses = []
            for step, start in enumerate(range(0, n, cfg.batch_size)):
                index = order[start:start + cfg.batch_size]
                loss = self._loss(maps, index)
                epoch_losses.append(descent_step(
                    optimizer, loss, "PatchFlow", lambda: f"epoch {epoch + 1}, step {step + 1}"))
            self.loss_history.append(float(np.mean(epoch_losses)))
            postfix = {"loss": f"{self.loss_history[-1]:.4f}"}
            if validation is not None:
                self.net.eval()
                val_maps, val_masks = validation
                score = pixel_auroc(val_masks, self._pixel_maps(val_maps)[1])
                score = -math.inf if not np.isfinite(score) else float(score)
                self.validation_history.append(score)
                if score > best_score:  # original train.py: strictly better pixel AUROC
                    best_score, self.selected_epoch = score, epoch + 1
                    best_state = copy.deepcopy(self.net.state_dict())
                postfix["val_pixel_auroc"] = f"{score:.4f}"
            bar.set_postfix(**postfix)
            if evaluate is not None:
                self.net.eval()
                evaluate(f"epoch {epoch + 1}/{cfg.epochs}")
        if best_state is not None:
            self.net.load_state_dict(best_state)
        elif validation is None:
            self.selected_epoch = cfg.epochs
        self.net.eval()
        return self

    @torch.no_grad()
    def latents(self, images, batch_size: int = 16) -> torch.Tensor:
        """Latents ``z`` ``[N, C_g, h, w]`` (CPU), for scoring and figures."""
        return torch.cat(list(self._latent_batches(self._maps(images), batch_size)))

    def _latent_batches(self, maps, batch_size: int = 16):
        if self.net is None:
            raise RuntimeError("PatchFlowDetector used before fit")
        self.net.eval()
        n = maps[0][0].shape[0]
        for start in range(0, n, batch_size):
            z, _ = self._forward(maps, slice(start, start + batch_size))
            yield z.cpu()

    @torch.no_grad()
    def _pixel_maps(self, maps, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """(image scores float64 [N], pixel maps float32 [N, S, S]) from cached maps."""
        image, pixel = [], []
        for z in self._latent_batches(maps, batch_size):
            full = pf.upsample_and_pad(pf.anomaly_map(z), self.crop, self.config.input_size)
            image.append(full.amax(dim=(1, 2)).numpy())  # image score: max of the map (paper)
            pixel.append(full.float().numpy())
        return np.concatenate(image), np.concatenate(pixel)

    def score(self, images: ImageSet) -> Scores:
        if images.size != self.config.input_size:
            raise UserError(f"images are {images.size} px but the detector was configured for "
                            f"input_size {self.config.input_size}")
        image, pixel = self._pixel_maps(self._maps(images))
        return Scores(image=image, pixel=pixel)

    def state_dict(self) -> dict:
        if self.net is None:
            raise RuntimeError("PatchFlowDetector has no state before fit")
        return {"net": self.net.state_dict(), "shape": torch.tensor(self._shape),
                "selected_epoch": torch.tensor(self.selected_epoch or 0)}

    def load_state_dict(self, state: dict) -> None:
        self._shape = tuple(int(v) for v in state["shape"].tolist())
        self.net = self._build_net(self._shape)
        self.net.load_state_dict(state["net"])  # includes the flow's permutations
        self.net.eval()
        self.selected_epoch = int(state.get("selected_epoch", torch.tensor(0))) or None

    # -- profiling ----------------------------------------------------------------------
    def inference_module(self, pretrained: bool = True) -> nn.Module:
        """Images ``[B, 3, S, S]`` in [0, 1] → image scores ``[B]``: backbone at every scale
        (the whole image, then resized to crop // 2**s), aggregation, adapter, flow, anomaly map, upsampling, max. Used to count
        FLOPs and time inference of the whole method. Before ``fit`` the adapter and flow are
        built untrained from a dry run (FLOPs and speed do not depend on trained weights);
        ``pretrained=False`` skips loading backbone weights for the same reason."""
        cfg = self.config
        extractor = get_extractor(cfg.backbone, list(cfg.layers), self.device,
                                  pretrained=pretrained)
        net = self.net
        if net is None:
            with torch.no_grad():
                size = cfg.input_size
                probe = torch.zeros(1, 3, size, size, device=self.device)
                fused = pf.aggregate_features([extractor(x) for x in
                                               scaled_inputs(probe, cfg.n_scales, self.crop)],
                                              cfg.patch_size, self.map_size)
            net = self._build_net(tuple(fused.shape[1:]))
        return _PatchFlowInference(self, extractor, net.to(self.device).eval())


class _PatchFlowInference(nn.Module):
    def __init__(self, detector: PatchFlowDetector, extractor: nn.Module, net: nn.Module):
        super().__init__()
        self.extractor = extractor
        self.net = net
        self.crop = detector.crop
        self.size = detector.config.input_size
        self.n_scales = detector.config.n_scales
        self.patch_size = detector.config.patch_size
        self.map_size = detector.map_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scales = scaled_inputs(images, self.n_scales, self.crop)
        fused = pf.aggregate_features([self.extractor(s) for s in scales], self.patch_size,
                                      self.map_size)
        z, _ = self.net(fused)
        maps = pf.upsample_and_pad(pf.anomaly_map(z), self.crop, self.size)
        return maps.amax(dim=(1, 2))
