"""CS-Flow (Rudolph et al., WACV 2022) behind the Detector protocol.

Frozen EfficientNet-B5 block-35 features of the input at 3 scales (§4.2), read from the shared
feature cache, are mapped by the fully convolutional cross-scale flow (§3.2, :mod:`.flow`) to
Gaussian latents, trained by maximum likelihood (Eq. 6); scoring and the scale ablation are
described in :mod:`.torch_model`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nfbench.datasets.base import ImageSet
from nfbench.errors import TrainingDivergedError
from nfbench.feature_cache import cached_features, get_extractor
from nfbench.methods import register_method
from nfbench.methods.csflow.protocol import CSFlowProtocol
from nfbench.methods.base import (EpochLosses, ProfilingNotSupported, Scores, adam,
                                  epoch_work_items, resolve_device)
from nfbench.methods.csflow.config import CSFlowConfig
from nfbench.methods.csflow.flow import nll_loss
from nfbench.methods.csflow.torch_model import (CSFlowImageModel, CSFlowModel, flow_inputs,
                                                scale_features)
from nfbench.progress import bars_enabled


@register_method("csflow")
class CSFlowDetector:
    """CS-Flow: cross-scale normalizing flow on multi-scale EfficientNet features.

    Fitted state: ``model_`` (:class:`CSFlowModel`), ``input_shapes_`` (the flow inputs'
    ``(C, h, w)``), ``loss_history_`` (mean loss per epoch) and ``fit_info_``
    (``loss_per_epoch`` and the original's ``evaluation_epochs``)."""

    Config = CSFlowConfig
    #: settings for a seconds-long run (conformance tests, CI smoke)
    smoke_settings = {"backbone": "efficientnet_lite0", "input_size": 128, "hidden_channels": 16,
                      "n_blocks": 2, "epochs": 2, "batch_size": 8}
    profiling_components: tuple[str, ...] = ()
    #: the original's evaluation protocol, measured beside the honest numbers
    original_protocol = CSFlowProtocol
    #: the cost model's work of a run: cached features, then ``epochs`` of training
    work_items = staticmethod(epoch_work_items)

    def __init__(self, config: CSFlowConfig = CSFlowConfig()):
        self.config = config
        self.device = resolve_device(config.device)
        self.model_: CSFlowModel | None = None
        self.input_shapes_: list[tuple[int, int, int]] = []
        self.loss_history_: list[float] = []
        self.fit_info_: dict | None = None

    # -- features -----------------------------------------------------------------------
    def _features(self, images: ImageSet) -> list[torch.Tensor]:
        cfg = self.config
        per_scale = cached_features(cfg.backbone, [cfg.layer], images, n_scales=cfg.n_scales,
                                    device=self.device)
        return [maps[0] for maps in per_scale]

    def _build_model(self, shapes: list[tuple[int, int, int]]) -> CSFlowModel:
        return CSFlowModel(self.config, shapes).to(self.device)

    # -- Detector protocol --------------------------------------------------------------
    def fit(self, train: ImageSet, evaluate: Callable[[str], None] | None = None) -> "CSFlowDetector":
        """``evaluate(label)``, if given, is called where the original tested (every E/4
        epochs, :mod:`.protocol`); it must not change the model."""
        from nfbench.methods.base import evaluation_epochs

        cfg = self.config
        inputs = flow_inputs(self._features(train), cfg.scale_mode, cfg.scale_index)
        self.input_shapes_ = [tuple(x.shape[1:]) for x in inputs]
        self.model_ = self._build_model(self.input_shapes_)
        flow = self.model_.flow
        optimizer = adam(flow.parameters(), self.device, lr=cfg.lr, betas=tuple(cfg.adam_betas),
                         eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
        n = inputs[0].shape[0]
        generator = torch.Generator().manual_seed(int(torch.initial_seed()) % 2**63)
        # shuffle=True, drop_last=False: every epoch's permutation drawn up front (the same
        # stream: nothing else draws from ``generator``), inputs and orders on the device
        orders = torch.stack([torch.randperm(n, generator=generator)
                              for _ in range(cfg.epochs)]).to(self.device)
        inputs = [x.to(self.device) for x in inputs]
        self.model_.train()
        self.loss_history_ = []
        losses = EpochLosses("CS-Flow")
        bar = tqdm(range(cfg.epochs), desc="csflow fit", leave=False, disable=not bars_enabled())
        for epoch in bar:
            order = orders[epoch]
            for step, start in enumerate(range(0, n, cfg.batch_size)):
                index = order[start:start + cfg.batch_size]
                z, log_jac = flow([x[index] for x in inputs])
                loss = nll_loss(z, log_jac, cfg.log_jac_reduction)
                losses.step(optimizer, loss, f"epoch {epoch + 1}, step {step + 1}",
                            clip=(flow.parameters(), cfg.grad_clip))
            self.loss_history_.append(losses.end_epoch())
            bar.set_postfix(loss=f"{self.loss_history_[-1]:.4f}")
            if evaluate is not None and epoch + 1 in evaluation_epochs(cfg.epochs):
                self.model_.eval()
                evaluate(f"epoch {epoch + 1}/{cfg.epochs}")
                self.model_.train()
        self.fit_info_ = {"loss_per_epoch": list(self.loss_history_),
                          "evaluation_epochs": sorted(evaluation_epochs(cfg.epochs))}
        self.model_.eval()
        return self

    @torch.no_grad()
    def latents(self, images: ImageSet, batch_size: int = 32) -> list[torch.Tensor]:
        """Latents ``z`` per flow output (CPU), for scoring and figures."""
        return [z.cpu() for z in self._latents(images, batch_size)]

    @torch.no_grad()
    def _latents(self, images: ImageSet, batch_size: int = 32) -> list[torch.Tensor]:
        """:meth:`latents` left on the run's device (scored there, then copied once)."""
        if self.model_ is None:
            raise RuntimeError("CSFlowDetector used before fit")
        maps = self._features(images)
        chunks = []
        for start in range(0, maps[0].shape[0], batch_size):
            z, _ = self.model_.latents([m[start:start + batch_size].to(self.device) for m in maps])
            chunks.append(z)
        return [torch.cat(parts) for parts in zip(*chunks)]

    def score(self, images: ImageSet) -> Scores:
        """:class:`CSFlowModel`'s forward on the cached features: latents batch by batch, then
        its :meth:`~CSFlowModel.score_latents` on all of them, on the run's device (the same
        operations as before on the CPU). Non-finite scores (a diverged flow) raise
        :class:`TrainingDivergedError` naming the setting to lower."""
        image, pixel = self.model_.score_latents(self._latents(images), images.size)
        return Scores(image=self._finite(image, images).cpu().numpy(),
                      pixel=self._finite(pixel, images).cpu().numpy())

    def image_scores(self, images: ImageSet) -> np.ndarray:
        """The image scores of :meth:`score` without building the pixel maps (the CS-Flow
        protocol selects on image AUROC only)."""
        from nfbench.methods.csflow.flow import image_score

        image = self._finite(image_score(self._latents(images)), images)
        return image.cpu().numpy().astype(np.float64)  # as Scores.image

    def _finite(self, scores: torch.Tensor, images: ImageSet) -> torch.Tensor:
        if not bool(torch.isfinite(scores).all()):
            raise TrainingDivergedError(
                f"CS-Flow produced non-finite scores on {images.name} (the flow diverged "
                f"during training; lower lr, now {self.config.lr:g})")
        return scores

    def state_dict(self) -> dict:
        if self.model_ is None:
            raise RuntimeError("CSFlowDetector has no state before fit")
        return {"flow": self.model_.flow.state_dict(), "shapes": torch.tensor(self.input_shapes_)}

    def load_state_dict(self, state: dict) -> None:
        self.input_shapes_ = [tuple(int(v) for v in row) for row in state["shapes"].tolist()]
        self.model_ = self._build_model(self.input_shapes_)
        self.model_.flow.load_state_dict(state["flow"])
        self.model_.eval()

    # -- profiling --------------------------------------------------------------------
    def inference_module(self, component: str | None = None, pretrained: bool = True) -> nn.Module:
        """:class:`CSFlowImageModel`: images in [0, 1] → ``(image scores, anomaly map)``, the
        backbone at every scale composed with the model ``score`` runs. Before ``fit`` the
        model is built untrained from a dry run (FLOPs and speed do not depend on trained
        weights), and ``pretrained=False`` skips loading backbone weights for the same
        reason."""
        if component is not None:
            raise ProfilingNotSupported(f"CS-Flow has no profiling component {component!r} "
                                        "(it profiles only as a whole)")
        cfg = self.config
        extractor = get_extractor(cfg.backbone, [cfg.layer], self.device, pretrained=pretrained)
        model = self.model_
        if model is None:
            with torch.no_grad():
                probe = torch.zeros(1, 3, cfg.input_size, cfg.input_size, device=self.device)
                maps = scale_features(extractor, probe, cfg.n_scales)
            shapes = [tuple(x.shape[1:]) for x in flow_inputs(maps, cfg.scale_mode,
                                                              cfg.scale_index)]
            model = self._build_model(shapes)
        return CSFlowImageModel(extractor, model.eval(), cfg.n_scales).eval()
