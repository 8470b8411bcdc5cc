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
backbone); the image score is its maximum (:mod:`.torch_model`).

With ``validation=synthetic`` the epoch is selected on synthetic anomalies made from held-out
training images (:mod:`nfbench.methods.synthetic.validation`).
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nfbench.datasets.base import ImageSet
from nfbench.errors import UserError
from nfbench.feature_cache import cached_features, get_extractor
from nfbench.methods import register_method
from nfbench.methods.patchflow.protocol import PatchFlowProtocol
from nfbench.methods.base import (EpochLosses, ProfilingNotSupported, Scores, adam,
                                  epoch_work_items, resolve_device)
from nfbench.methods.patchflow import flow as pf
from nfbench.methods.patchflow.config import ADAPTERS, PatchFlowConfig
from nfbench.methods.patchflow.torch_model import (PatchFlowImageModel, PatchFlowModel,
                                                   scale_features)
from nfbench.methods.synthetic import synthetic_anomaly, tensor_images
from nfbench.precision import autocast_subnets
from nfbench.progress import bars_enabled


#: synthetic validation sets built in this process (oldest dropped first): the 7 PatchFlow
#: variants of a category and seed share one (issue 19 §2)
_VALIDATION_SETS: dict[tuple, tuple] = {}
_VALIDATION_SETS_KEPT = 4


@register_method("patchflow")
class PatchFlowDetector:
    """PatchFlow: patch-aggregated multi-scale features, an adapter and a one-step flow.

    Fitted state: ``model_`` (:class:`PatchFlowModel`), ``shape_`` (aggregated ``(C, h, w)``),
    ``loss_history_``, ``validation_history_`` (synthetic-validation pixel AUROC per epoch),
    ``selected_epoch_``, ``fit_indices_`` / ``validation_indices_`` (the train split) and
    ``fit_info_`` (``loss_per_epoch``, the validation per epoch, the selected epoch)."""

    Config = PatchFlowConfig
    #: settings for a seconds-long run (conformance tests, CI smoke)
    smoke_settings = {"backbone": "efficientnet_lite0", "input_size": 128, "crop_size": 0,
                      "hidden": 16, "epochs": 2, "batch_size": 8}
    profiling_components: tuple[str, ...] = ()
    #: the original's evaluation protocol, measured beside the honest numbers
    original_protocol = PatchFlowProtocol
    #: the cost model's work of a run: cached features, then ``epochs`` of training
    work_items = staticmethod(epoch_work_items)

    def __init__(self, config: PatchFlowConfig = PatchFlowConfig()):
        self.config = config
        self.device = resolve_device(config.device)
        self.model_: PatchFlowModel | None = None
        self.shape_: tuple[int, int, int] | None = None  # (aggregated C, h, w)
        self.loss_history_: list[float] = []
        self.validation_history_: list[float] = []
        self.selected_epoch_: int | None = None
        self.fit_indices_: list[int] = []
        self.validation_indices_: list[int] = []
        self.fit_info_: dict | None = None

    # -- sizes (functions of the config) ------------------------------------------------
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

    def _build_net(self, shape: tuple[int, int, int], seed: int = 0) -> PatchFlowModel:
        cfg = self.config
        channels, height, width = shape
        if self.adapter_channels > channels:
            raise UserError(f"adapter={cfg.adapter!r} outputs {self.adapter_channels} channels "
                            f"but the aggregated features have only {channels}")
        net = pf.PatchFlowNet(channels, self.adapter_channels, (height, width), cfg.flow_steps,
                              cfg.hidden, cfg.clamp, cfg.subnet, seed)
        autocast_subnets(net, cfg.precision)  # bf16: the coupling subnets only
        return PatchFlowModel(net, cfg.patch_size, self.map_size, self.crop,
                              cfg.input_size).to(self.device)

    def _loss(self, maps: list[list[torch.Tensor]], index) -> torch.Tensor:
        z, log_jac = self.model_.latents(self._batch(maps, index))
        loss = pf.nll_loss(z, log_jac)
        if self.config.adapter_training == "volume":
            # per position, divided by C_g like Eq. 5's other terms (D = C_g h w)
            volume = pf.adapter_log_volume(self.model_.net.adapter.weight) / z.shape[1]
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
        """Synthetic anomalies made from the held-out train images: (image source, masks).
        Built once per (training images, held-out indices, seed) in a process and reused by
        every variant and by the original protocol (no setting of the config enters it)."""
        seed = (int(torch.initial_seed()) + 1) % 2**63
        key = (train.name, train.fingerprint, train.size, tuple(indices), seed)
        if key not in _VALIDATION_SETS:
            while len(_VALIDATION_SETS) >= _VALIDATION_SETS_KEPT:
                _VALIDATION_SETS.pop(next(iter(_VALIDATION_SETS)))
            _VALIDATION_SETS[key] = self._make_validation_set(train, indices, seed)
        return _VALIDATION_SETS[key]

    @staticmethod
    def _make_validation_set(train: ImageSet, indices: list[int], seed: int):
        rng = np.random.default_rng(seed)
        clean = train.load_images(indices)
        images, masks = [], []
        for image in clean:
            defect, mask = synthetic_anomaly(image.permute(1, 2, 0).numpy().astype(np.float64), rng)
            images.append(torch.from_numpy(defect).permute(2, 0, 1))
            masks.append(mask)
        paths = [f"synthetic:{train.paths[i]}" for i in indices]
        name = f"{train.name}/patchflow-validation".lstrip("/")
        return tensor_images(name, paths, torch.stack(images)), np.stack(masks)

    # -- Detector protocol --------------------------------------------------------------
    def fit(self, train: ImageSet, evaluate: Callable[[str], None] | None = None
            ) -> "PatchFlowDetector":
        """``evaluate(label)``, if given, is called after every epoch (the original's
        selection points, :mod:`.protocol`); it must not change the model."""
        from nfbench.metrics import pixel_auroc

        cfg = self.config
        self.fit_indices_, self.validation_indices_ = self._split(train)
        fit_set = train if not self.validation_indices_ else train.subset(self.fit_indices_)
        maps = self._maps(fit_set)
        validation = None
        if self.validation_indices_:
            val_images, val_masks = self._validation_set(train, self.validation_indices_)
            validation = (self._maps(val_images), val_masks)

        first = maps[0][0]
        self.shape_ = (sum(m.shape[1] for layer_maps in maps for m in layer_maps),
                       *(self.map_size or (int(first.shape[-2]), int(first.shape[-1]))))
        flow_seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        self.model_ = self._build_net(self.shape_, seed=flow_seed)
        if cfg.adapter_training == "frozen":
            self.model_.net.adapter.requires_grad_(False)
        params = [p for p in self.model_.parameters() if p.requires_grad]
        optimizer = adam(params, self.device, lr=cfg.lr, weight_decay=cfg.weight_decay)
        n = first.shape[0]
        generator = torch.Generator().manual_seed(int(torch.initial_seed()) % 2**63)
        # shuffle=True, drop_last=False: every epoch's permutation drawn up front (the same
        # stream: nothing else draws from ``generator``), maps and orders on the device
        orders = torch.stack([torch.randperm(n, generator=generator)
                              for _ in range(cfg.epochs)]).to(self.device)
        maps = [[m.to(self.device) for m in layer_maps] for layer_maps in maps]
        losses = EpochLosses("PatchFlow")
        self.loss_history_, self.validation_history_ = [], []
        self.selected_epoch_ = None
        best_score, best_state = -math.inf, None
        bar = tqdm(range(cfg.epochs), desc="patchflow fit", leave=False,
                   disable=not bars_enabled())
        for epoch in bar:
            self.model_.train()
            order = orders[epoch]
            for step, start in enumerate(range(0, n, cfg.batch_size)):
                index = order[start:start + cfg.batch_size]
                loss = self._loss(maps, index)
                losses.step(optimizer, loss, f"epoch {epoch + 1}, step {step + 1}")
            self.loss_history_.append(losses.end_epoch())
            postfix = {"loss": f"{self.loss_history_[-1]:.4f}"}
            if validation is not None:
                self.model_.eval()
                val_maps, val_masks = validation
                score = pixel_auroc(val_masks, self._pixel_maps(val_maps)[1])
                score = -math.inf if not np.isfinite(score) else float(score)
                self.validation_history_.append(score)
                if score > best_score:  # original train.py: strictly better pixel AUROC
                    best_score, self.selected_epoch_ = score, epoch + 1
                    best_state = copy.deepcopy(self.model_.state_dict())
                postfix["val_pixel_auroc"] = f"{score:.4f}"
            bar.set_postfix(**postfix)
            if evaluate is not None:
                self.model_.eval()
                evaluate(f"epoch {epoch + 1}/{cfg.epochs}")
        if best_state is not None:
            self.model_.load_state_dict(best_state)
        elif validation is None:
            self.selected_epoch_ = cfg.epochs
        self.fit_info_ = {"loss_per_epoch": list(self.loss_history_),
                          "validation_pixel_auroc_per_epoch": list(self.validation_history_),
                          "selected_epoch": self.selected_epoch_}
        self.model_.eval()
        return self

    @torch.no_grad()
    def latents(self, images, batch_size: int = 16) -> torch.Tensor:
        """Latents ``z`` ``[N, C_g, h, w]`` (CPU), for scoring and figures."""
        return torch.cat(list(self._latent_batches(self._maps(images), batch_size)))

    def _latent_batches(self, maps, batch_size: int = 16, cpu: bool = True):
        if self.model_ is None:
            raise RuntimeError("PatchFlowDetector used before fit")
        self.model_.eval()
        n = maps[0][0].shape[0]
        for start in range(0, n, batch_size):
            z, _ = self.model_.latents(self._batch(maps, slice(start, start + batch_size)))
            yield z.cpu() if cpu else z

    @torch.no_grad()
    def _pixel_maps(self, maps, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """(image scores float64 [N], pixel maps float32 [N, S, S]) from cached maps:
        :class:`PatchFlowModel`'s forward batch by batch, the full-resolution maps made on the
        run's device (the same float64 operations as on the CPU), then copied to the CPU."""
        image, pixel = [], []
        for z in self._latent_batches(maps, batch_size, cpu=False):
            scores, full = self.model_.score_latents(z)
            image.append(scores.cpu().numpy())
            pixel.append(full.float().cpu().numpy())
        return np.concatenate(image), np.concatenate(pixel)

    def score(self, images: ImageSet) -> Scores:
        if images.size != self.config.input_size:
            raise UserError(f"images are {images.size} px but the detector was configured for "
                            f"input_size {self.config.input_size}")
        image, pixel = self._pixel_maps(self._maps(images))
        return Scores(image=image, pixel=pixel)

    def state_dict(self) -> dict:
        if self.model_ is None:
            raise RuntimeError("PatchFlowDetector has no state before fit")
        return {"net": self.model_.net.state_dict(), "shape": torch.tensor(self.shape_),
                "selected_epoch": torch.tensor(self.selected_epoch_ or 0)}

    def load_state_dict(self, state: dict) -> None:
        self.shape_ = tuple(int(v) for v in state["shape"].tolist())
        self.model_ = self._build_net(self.shape_)
        self.model_.net.load_state_dict(state["net"])  # includes the flow's permutations
        self.model_.eval()
        self.selected_epoch_ = int(state.get("selected_epoch", torch.tensor(0))) or None

    # -- profiling ----------------------------------------------------------------------
    def inference_module(self, component: str | None = None, pretrained: bool = True) -> nn.Module:
        """:class:`PatchFlowImageModel`: images ``[B, 3, S, S]`` in [0, 1] → ``(image scores,
        anomaly map)``, the backbone at every scale (the whole image, then resized to
        crop // 2**s) composed with the model ``score`` runs. Before ``fit`` the adapter and
        flow are built untrained from a dry run (FLOPs and speed do not depend on trained
        weights); ``pretrained=False`` skips loading backbone weights for the same reason."""
        if component is not None:
            raise ProfilingNotSupported(f"PatchFlow has no profiling component {component!r} "
                                        "(it profiles only as a whole)")
        cfg = self.config
        extractor = get_extractor(cfg.backbone, list(cfg.layers), self.device,
                                  pretrained=pretrained)
        model = self.model_
        if model is None:
            with torch.no_grad():
                probe = torch.zeros(1, 3, cfg.input_size, cfg.input_size, device=self.device)
                fused = pf.aggregate_features(scale_features(extractor, probe, cfg.n_scales,
                                                             self.crop),
                                              cfg.patch_size, self.map_size)
            model = self._build_net(tuple(fused.shape[1:]))
        return PatchFlowImageModel(extractor, model.eval(), cfg.n_scales).eval()
