"""PaDiM-style Gaussian baseline behind the Detector protocol.

At every feature-map position the normal features are modelled by a Gaussian N(mu, Sigma)
(PaDiM Eq. 1, Sigma regularised by eps*I); a test position's score is its Mahalanobis distance
(PaDiM Eq. 2, :mod:`.torch_model`). It is not one of the three papers: it is the honest,
training-free reference that every flow should beat, and the method the conformance suite and
CLI run first.
"""

from __future__ import annotations

import torch
from torch import nn

from nfbench.datasets.base import ImageSet
from nfbench.feature_cache import cached_features, get_extractor
from nfbench.methods import register_method
from nfbench.methods.base import ProfilingNotSupported, Scores, resolve_device
from nfbench.methods.gaussian.config import GaussianConfig
from nfbench.methods.gaussian.torch_model import GaussianImageModel, GaussianModel


@register_method("gaussian")
class GaussianDetector:
    """Per-position Gaussian on concatenated multi-layer features.

    Fitted state: ``model_`` (:class:`GaussianModel`: ``mean``, ``precision``, ``channels``)
    and ``map_size_`` (the feature map's ``(h, w)``)."""

    Config = GaussianConfig
    #: settings for a seconds-long run (conformance tests, CI smoke)
    smoke_settings = {"input_size": 96, "n_features": 50}
    profiling_components: tuple[str, ...] = ()
    #: no original evaluation protocol to measure (the suite's own baseline)
    original_protocol = None

    def __init__(self, config: GaussianConfig = GaussianConfig()):
        self.config = config
        self.model_: GaussianModel | None = None
        self.map_size_: tuple[int, int] | None = None
        self.fit_info_: dict | None = None

    def _maps(self, images: ImageSet) -> list[torch.Tensor]:
        cfg = self.config
        return cached_features(cfg.backbone, cfg.layers, images, n_scales=1,
                               batch_size=cfg.batch_size, device=resolve_device(cfg.device))[0]

    def _model(self, mean, precision, channels) -> GaussianModel:
        return GaussianModel(mean, precision, channels, self.config.input_size,
                             self.config.blur_sigma)

    def fit(self, train: ImageSet) -> "GaussianDetector":
        embedding = GaussianModel.embed(self._maps(train))
        n, c, h, w = embedding.shape
        d = min(self.config.n_features, c)
        channels = torch.randperm(c)[:d].sort().values
        x = embedding[:, channels].permute(2, 3, 0, 1).reshape(h * w, n, d).double()
        mean = x.mean(dim=1)
        centred = x - mean[:, None]
        covariance = centred.transpose(1, 2) @ centred / max(n - 1, 1)
        covariance += self.config.covariance_eps * torch.eye(d, dtype=torch.float64)
        self.model_ = self._model(mean, torch.linalg.inv(covariance), channels)
        self.map_size_ = (h, w)
        # closed-form fit (mean and covariance): no training loss, recorded as such
        self.fit_info_ = {"loss_per_epoch": [], "loss_epoch": "none: closed-form fit"}
        return self

    @torch.no_grad()
    def score(self, images: ImageSet) -> Scores:
        """:class:`GaussianModel`'s forward on the cached features, on the run's device (the
        distances, the upsampled and blurred full-resolution maps: the same operations as on
        the CPU), the scores copied to the CPU."""
        if self.model_ is None:
            raise RuntimeError("GaussianDetector.score called before fit")
        model, device = self.model_, resolve_device(self.config.device)
        if images.size != model.image_size or model.mean.device != device:
            # the map follows the images given; a copy on the device (model_ stays on the CPU)
            model = GaussianModel(model.mean.to(device), model.precision.to(device),
                                  model.channels.to(device), images.size, model.blur_sigma)
        image, pixel = model([m.to(device) for m in self._maps(images)])
        return Scores(image=image.cpu().numpy(), pixel=pixel.cpu().numpy())

    def state_dict(self) -> dict:
        if self.model_ is None:
            raise RuntimeError("GaussianDetector has no state before fit")
        return {"mean": self.model_.mean, "precision": self.model_.precision,
                "channels": self.model_.channels}

    def load_state_dict(self, state: dict) -> None:
        self.model_ = self._model(state["mean"], state["precision"], state["channels"])

    def inference_module(self, component: str | None = None, pretrained: bool = True) -> nn.Module:
        """:class:`GaussianImageModel`: images in [0, 1] → ``(image scores, anomaly map)``, the
        backbone composed with the model ``score`` runs. Before ``fit`` the Gaussians are
        standard normals on the first ``n_features`` channels (FLOPs and speed do not depend
        on them); ``pretrained=False`` skips loading backbone weights."""
        if component is not None:
            raise ProfilingNotSupported(f"the Gaussian baseline has no profiling component "
                                        f"{component!r}")
        cfg = self.config
        device = resolve_device(cfg.device)
        extractor = get_extractor(cfg.backbone, list(cfg.layers), device, pretrained=pretrained)
        model = self.model_
        if model is None:
            with torch.no_grad():
                probe = torch.zeros(1, 3, cfg.input_size, cfg.input_size, device=device)
                _, c, h, w = GaussianModel.embed(list(extractor(probe))).shape
            d = min(cfg.n_features, c)
            model = self._model(torch.zeros(h * w, d, dtype=torch.float64),
                                torch.eye(d, dtype=torch.float64).expand(h * w, d, d).clone(),
                                torch.arange(d))
        return GaussianImageModel(extractor, model.to(device)).eval()
