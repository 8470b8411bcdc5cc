"""CFlow-AD (Gudovskiy, Ishizaka, Kozuka; WACV 2022) behind the Detector protocol; in the
CLS-CNFs paper (Oh & Kim, IEEE Access 2024) it is FE_PRE-CNFs, the CNFs on the pretrained
feature extractor (Table 1, A_nf^PRE of Table 2, the CFlow-AD rows of Tables 4 and 6).

A frozen ImageNet WideResNet-50-2 gives the layer2, layer3 and layer4 maps; one conditional
flow per map (:mod:`nfbench.methods.cnf.flows`) is trained on their fibers; the anomaly map
sums the upsampled, exponentiated, max-normalised per-dimension log-likelihoods
(:mod:`nfbench.methods.cnf.scoring`). The network is :class:`.torch_model.CFlowModel`.

Encoder weights: torchvision ``Wide_ResNet50_2_Weights.IMAGENET1K_V1`` (file 95faca4d), the
weights of CFlow-AD's ``custom_models/resnet.py``; in timm the same weights are the tag
``wide_resnet50_2.tv_in1k`` (timm's bare ``wide_resnet50_2`` is ``racm_in1k``, other weights).
As in the original, every zero-padded convolution of the encoder is switched to reflect
padding (``padding="reflect"``); with ``padding="zeros"`` the frozen features come from the
suite's shared on-disk feature cache instead.

``normalization`` chooses the per-map reference maxima ``u_i`` and the final ``n_max``:

* ``transductive`` (CFlow-AD's code): both are maxima over the *scored set*. ``score(images)``
  gets the whole test set at once, so a test image's score depends on the other test images.
* ``inductive``: both are maxima over the training images, fixed at fit time.

The CLS-CNFs paper scores its FE_PRE-CNFs like its own method: train-set ``u_i`` (Eq. 4) and a
test-set ``n_max`` (Eq. 8). ``n_max`` only shifts every score of a test set by one constant, so
that scoring gives exactly the metrics of ``inductive``.

``score()`` runs the model's forward in its two halves: the frozen encoder's features (the
shared feature cache for zero padding: the same network) and the flows' map
(:class:`~nfbench.methods.cnf.scoring.NFMap`) on them, inductive as in the forward or, for
``transductive``, with the maxima of the scored set (a set-level step).
``inference_module()`` is the model itself, with the training-set maxima: the inductive form
(the transductive one costs the same plus two maxima over the set).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from nfbench.datasets.base import ImageSet
from nfbench.methods import register_method
from nfbench.methods.cflow.protocol import CFlowProtocol
from nfbench.methods.base import ProfilingNotSupported, Scores, resolve_device
from nfbench.methods.cflow.config import CFlowConfig
from nfbench.methods.cflow.torch_model import CFlowModel
from nfbench.methods.cnf.config import apply_category_settings, category_of
from nfbench.methods.cnf.encoder import build_encoder, frozen_features
from nfbench.methods.cnf.flows import build_flows
from nfbench.methods.cnf.scoring import NFMap, image_scores
from nfbench.methods.cnf.stage import StageCache, cnf_work_items, fit_cnf_stage
from nfbench.methods.cnf.training import schedule_info


@register_method("cflow")
class CFlowDetector:
    """CFlow-AD: conditional normalizing flows on frozen WideResNet-50-2 feature fibers.

    After ``fit``: ``settings_`` (the config with the category's ``category_settings``
    applied), ``nf_`` (the trained :class:`NFMap`: flows and training-set maxima),
    ``channels_`` and ``fit_info_`` (the effective schedule)."""

    Config = CFlowConfig
    #: settings for a seconds-long run (conformance tests, CI smoke)
    smoke_settings = {"backbone": "efficientnet_lite0", "input_size": 128, "padding": "zeros",
                      "n_blocks": 2, "meta_epochs": 2, "sub_epochs": 1, "warm_epochs": 1,
                      "fiber_fraction": 0.25, "reuse_stages": False}
    profiling_components: tuple[str, ...] = ()
    #: the original's evaluation protocol, measured beside the honest numbers
    original_protocol = CFlowProtocol
    #: runs share trained stages (encoders, flows) through :mod:`nfbench.methods.cnf.stage`
    shares_stages = True

    @staticmethod
    def work_items(config: dict, work) -> None:
        """The cost model's work of a run: the frozen encoder's features, the CNF stage."""
        work.feature_source = work.feature_key("cnf")
        work.add_features()
        cnf_work_items(config, work)

    @staticmethod
    def category_config(config, category: str | None):
        """The config a run of ``category`` uses: its params.yaml ``category_settings``."""
        return apply_category_settings(config, category)

    def __init__(self, config: CFlowConfig = CFlowConfig()):
        self.config = config
        self.device = resolve_device(config.device)
        self.settings_ = config  # the config until fit resolves a category's settings
        self.fit_info_: dict[str, Any] | None = None
        self.nf_: NFMap | None = None
        self.channels_: list[int] = []

    def _features(self, images: ImageSet) -> list[torch.Tensor]:
        cfg = self.settings_
        return frozen_features(cfg.backbone, cfg.layers, cfg.padding, images, self.device)[0]

    def fit(self, train: ImageSet, evaluate: Callable[[str], None] | None = None
            ) -> "CFlowDetector":
        """``evaluate(label)``, if given, is called after every meta-epoch (where CFlow-AD
        tested, :mod:`.protocol`), with the detector scorable; it must not change it."""
        self.settings_ = cfg = apply_category_settings(self.config, category_of(train))
        seed = int(torch.initial_seed())
        cache = StageCache(cfg.reuse_stages)
        features, source = frozen_features(cfg.backbone, cfg.layers, cfg.padding, train,
                                           self.device)
        self.channels_ = [f.shape[1] for f in features]

        calibrated = None  # the flows calibrated at the last meta-epoch's evaluation

        def at_meta_epoch(meta: int, flows: nn.ModuleList) -> None:
            nonlocal calibrated
            self.nf_ = NFMap(flows, cfg.condition_dim)
            self.nf_.calibrate(features, cfg.input_size)
            calibrated = flows if meta == cfg.meta_epochs else None
            evaluate(f"meta-epoch {meta}/{cfg.meta_epochs}")

        flows, history = fit_cnf_stage(
            features, source, cfg, train, seed, self.device, cache, desc="cflow fit",
            on_meta_epoch=at_meta_epoch if evaluate is not None else None,
            keep_snapshots=True)  # a later run with the hook replays them
        self.fit_info_ = {"schedule": schedule_info(cfg), "loss_per_epoch": history,
                          "loss_epoch": "meta-epoch"}
        if calibrated is not flows:  # the last evaluation calibrated these very weights
            self.nf_ = NFMap(flows, cfg.condition_dim)
            self.nf_.calibrate(features, cfg.input_size)
        return self

    def anomaly_map(self, images: ImageSet) -> torch.Tensor:
        """``A_nf [N, S, S]`` (float64) under the configured normalisation."""
        if self.nf_ is None:
            raise RuntimeError("CFlowDetector used before fit")
        features = self._features(images)
        if self.settings_.normalization == "inductive":
            return self.nf_(features, images.size)  # the model's forward on the features
        return self.nf_.anomaly(self.nf_.log_maps(features), images.size, "scored", "scored")

    def score(self, images: ImageSet) -> Scores:
        """Transductive by default (CFlow-AD): the maxima are taken over ``images``, so pass
        the whole test set at once."""
        image, pixel = image_scores(self.anomaly_map(images))
        return Scores(image=image.numpy(), pixel=pixel.float().numpy())

    def state_dict(self) -> dict:
        if self.nf_ is None:
            raise RuntimeError("CFlowDetector has no state before fit")
        return {"flows": self.nf_.flows.state_dict(), "channels": torch.tensor(self.channels_),
                **self.nf_.reference_state()}

    def load_state_dict(self, state: dict) -> None:
        self.channels_ = [int(c) for c in state["channels"].tolist()]
        flows = build_flows(self.channels_, self.settings_, seed=0,
                            draw_permutations=False).to(self.device)
        flows.load_state_dict(state["flows"])
        self.nf_ = NFMap(flows.eval(), self.settings_.condition_dim)
        self.nf_.load_reference(state)

    def inference_module(self, component: str | None = None,
                         pretrained: bool = True) -> nn.Module:
        """:class:`CFlowModel`: images in [0, 1] -> (image scores, A_nf), inductive (see the
        module docstring). Before fit, the flows are untrained (reference maxima 0)."""
        if component is not None:
            raise ProfilingNotSupported(f"cflow has no profiling components, got {component!r}")
        cfg = self.settings_
        encoder = build_encoder(cfg.backbone, cfg.layers, cfg.padding, False, self.device,
                                pretrained)
        nf = self.nf_
        if nf is None:
            # untrained, for profiling: no random rotations drawn (no FLOP or speed changes)
            flows = build_flows(encoder.channels(), cfg, seed=0, draw_permutations=False)
            flows = flows.to(self.device).eval()
            nf = NFMap(flows, cfg.condition_dim)
        return CFlowModel(encoder, nf).eval()
