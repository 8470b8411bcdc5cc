"""CFlow-AD (Gudovskiy, Ishizaka, Kozuka; WACV 2022) behind the Detector protocol; in the
CLS-CNFs paper (Oh & Kim, IEEE Access 2024) it is FE_PRE-CNFs, the CNFs on the pretrained
feature extractor (Table 1, A_nf^PRE of Table 2, the CFlow-AD rows of Tables 4 and 6).

A frozen ImageNet WideResNet-50-2 gives the layer2, layer3 and layer4 maps; one conditional
flow per map (:mod:`.flow`) is trained on their fibers; the anomaly map sums the upsampled,
exponentiated, max-normalised per-dimension log-likelihoods (see :mod:`.flow`).

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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nfbench.backbones import FeatureExtractor, get_backbone_spec
from nfbench.datasets.base import ImageSet
from nfbench.errors import UserError
from nfbench.feature_cache import cached_features, load_entry, save_entry
from nfbench.methods import register_method
from nfbench.progress import bars_enabled
from nfbench.methods.base import Scores, resolve_device
from nfbench.methods.cflow.flow import (CNFSettings, anomaly_from_normal, build_flows,
                                        layer_maxima, log_likelihood_maps, normal_score_map,
                                        schedule_info, train_flows)
from nfbench.paths import cache_root

NORMALIZATIONS = ("transductive", "inductive")
PADDINGS = ("reflect", "zeros")
#: The three maps CFlow-AD and CLS-CNFs use (WRN50-2 layer2, layer3, layer4 = 512/1024/2048 ch).
LAYERS = ("stride8", "stride16", "stride32")


@dataclass(frozen=True)
class CFlowConfig:
    """Defaults are CFlow-AD's MVTec AD setting (gudovskiy/cflow-ad main.py / config.py)."""

    backbone: str = "wide_resnet50_2"  # cflow-ad: torchvision WRN50-2 (= timm wide_resnet50_2.tv_in1k)
    layers: tuple[str, ...] = LAYERS  # cflow-ad pool_layers L=3: layer2, layer3, layer4
    input_size: int = 256  # cflow-ad README: 128-512 per category; CLS-CNFs §IV-B: 256 for all
    padding: str = "reflect"  # cflow-ad custom_models/resnet.py PADDING_MODE='reflect'
    n_blocks: int = 8  # cflow-ad coupling_blocks (CLS-CNFs compares with 6, §IV-B)
    condition_dim: int = 128  # cflow-ad condition_vec
    clamp: float = 1.9  # cflow-ad clamp_alpha
    permute_soft: bool = True  # cflow-ad freia_cflow_head
    fiber_batch: int = 256  # cflow-ad N (fiber batch)
    lr: float = 2e-4  # cflow-ad lr (Adam, default betas)
    meta_epochs: int = 25  # cflow-ad meta_epochs
    sub_epochs: int = 8  # cflow-ad sub_epochs
    # cflow-ad lr_warm_epochs (linear warm-up from lr/10) of its 25 meta-epochs
    # (schedule_meta_epochs). A run of meta_epochs != schedule_meta_epochs (demo, smoke,
    # --set meta_epochs=...) keeps the schedule's shape: the warm-up lasts
    # warm_epochs * meta_epochs / schedule_meta_epochs meta-epochs (8 % of the run) and the
    # cosine spans the meta_epochs run; the effective schedule is in the record's fit_info.
    warm_epochs: int = 2
    schedule_meta_epochs: int = 25  # cflow-ad: the meta-epochs its warm-up was set for
    lr_min_factor: float = 1e-3  # cflow-ad cosine eta_min = lr * lr_decay_rate**3 = lr * 1e-3
    batch_size: int = 32  # cflow-ad batch_size (images per step)
    fiber_fraction: float = 1.0  # share of fibers used per batch (budget knob; original 1.0)
    normalization: str = "transductive"  # cflow-ad train.py: per-map and final max over the test set
    #: per-category overrides of any other field, e.g. {"01": {"lr": 5e-5}} (benchmark data)
    category_settings: dict = field(default_factory=dict)
    reuse_stages: bool = True  # reuse an identical, already trained flow from the on-disk cache
    device: str = "auto"


# ------------------------------------------------------------------------------------------
# helpers shared with CLS-CNFs
# ------------------------------------------------------------------------------------------

def category_of(images: ImageSet) -> str | None:
    """The category of an image set named ``<category>/<split>`` (``None`` if unnamed)."""
    return images.name.split("/")[0] if images.name else None


def apply_category_settings(config: Any, category: str | None) -> Any:
    """``config`` with ``config.category_settings[category]`` applied (keys checked)."""
    overrides = dict(config.category_settings.get(category, {})) if category else {}
    if not overrides:
        return config
    from nfbench.methods.base import build_config

    fields = {f.name for f in dataclasses.fields(config)}
    bad = sorted(set(overrides) - fields) + sorted({"category_settings", "input_size"} & set(overrides))
    if bad:
        raise UserError(f"category_settings[{category!r}] has invalid key(s) {', '.join(bad)}")
    merged = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    merged.update(overrides)
    return build_config(type(config), merged)


def set_padding(module: nn.Module, mode: str) -> nn.Module:
    """Switch every symmetric-padded ``nn.Conv2d`` of ``module`` to ``mode`` padding
    (CFlow-AD and AD-CLSCNFs set ``padding_mode='reflect'`` on every conv with padding > 0).
    Convolutions that pad dynamically (timm ``Conv2dSame``) keep their zero padding."""
    if mode not in PADDINGS:
        raise UserError(f"padding must be one of {', '.join(PADDINGS)}, got {mode!r}")
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


def code_digest(*files: str) -> str:
    """sha1 of the given source files: part of every stage-cache key, so that a change of the
    training code never reuses a stale stage."""
    digest = hashlib.sha1()
    for name in files:
        digest.update(Path(name).read_bytes())
    return digest.hexdigest()[:16]


class StageCache:
    """Trained stages (flows, fine-tuned encoders) on disk, keyed by everything that
    determines them: code, settings, training images, seed and the stage they build on.

    Variants that differ only in how they *score* (score map, w, normalisation) or that share
    a stage (CLS-CNFs-nsFE's CNFs are FE_PRE-CNFs) then train it once. An entry is written
    atomically and read with ``weights_only=True``.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled

    @staticmethod
    def key(description: dict) -> str:
        return hashlib.sha1(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:24]

    @staticmethod
    def path(kind: str, key: str) -> Path:
        return cache_root() / "stages" / kind / f"{key}.pt"

    def load(self, kind: str, key: str) -> dict | None:
        path = self.path(kind, key)
        if not self.enabled:
            return None
        return load_entry(path, key, what="stage cache")  # verified: key, checksum, finite

    def save(self, kind: str, key: str, state: dict) -> None:
        if not self.enabled:
            return
        save_entry(self.path(kind, key), key, state)


_FLOW_CODE = (__file__, str(Path(__file__).with_name("flow.py")))


def frozen_features(backbone: str, layers: Sequence[str], padding: str, images: ImageSet,
                    device: torch.device) -> tuple[list[torch.Tensor], dict]:
    """Features of the frozen ImageNet encoder and a description of their source.

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


#: Largest total size of the per-meta-epoch snapshots a stage-cache entry keeps (bytes).
SNAPSHOT_LIMIT = 256 * 2**20


def fit_cnf_stage(features: list[torch.Tensor], source: dict, settings: CNFSettings,
                  train: ImageSet, seed: int, device: torch.device, cache: StageCache,
                  desc: str, on_meta_epoch: Callable[[int, nn.ModuleList], None] | None = None
                  ) -> nn.ModuleList:
    """Build and train (or reuse from the cache) the conditional flows on ``features``.

    ``on_meta_epoch(m, flows)`` is called (flows in eval mode) after every meta-epoch; a
    reused stage replays it from the per-meta-epoch snapshots its entry keeps (up to
    :data:`SNAPSHOT_LIMIT`), or is trained again if it has none."""
    channels = [f.shape[1] for f in features]
    key = StageCache.key({"stage": "cnf", "code": code_digest(*_FLOW_CODE), "source": source,
                          "settings": dataclasses.asdict(settings), "seed": seed,
                          "train": train.fingerprint})
    stored = cache.load("cnf", key)
    if stored is not None and on_meta_epoch is not None and "snapshots" not in stored:
        stored = None
    flows = build_flows(channels, settings, seed=seed + 1000, draw_permutations=stored is None)
    if stored is not None:
        flows = flows.to(device).eval()
        for meta, snapshot in enumerate(stored.get("snapshots", []) if on_meta_epoch else [], 1):
            flows.load_state_dict(snapshot)
            on_meta_epoch(meta, flows)
        flows.load_state_dict(stored["flows"])
        return flows.eval()
    flows = flows.to(device)
    snapshots: list[dict] = []
    keep = settings.meta_epochs * sum(v.numel() * v.element_size()
                                      for v in flows.state_dict().values()) <= SNAPSHOT_LIMIT

    def at_meta_epoch(meta: int) -> None:
        if keep:
            snapshots.append({k: v.detach().cpu().clone() for k, v in flows.state_dict().items()})
        flows.eval()
        on_meta_epoch(meta, flows)
        flows.train()

    generator = torch.Generator().manual_seed(seed + 2000)
    train_flows(flows, features, settings, generator, device, desc=desc,
                progress=bars_enabled(),
                on_meta_epoch=at_meta_epoch if on_meta_epoch is not None else None)
    entry: dict[str, Any] = {"flows": {k: v.cpu() for k, v in flows.state_dict().items()}}
    if snapshots:
        entry["snapshots"] = snapshots
    cache.save("cnf", key, entry)
    return flows


def cnf_settings(config: Any) -> CNFSettings:
    """The CNF-stage fields of a CFlow or CLS-CNFs config."""
    return CNFSettings(n_blocks=config.n_blocks, cond_dim=config.condition_dim, clamp=config.clamp,
                       permute_soft=config.permute_soft, fiber_batch=config.fiber_batch,
                       lr=config.lr, meta_epochs=config.meta_epochs, sub_epochs=config.sub_epochs,
                       warm_epochs=config.warm_epochs, lr_min_factor=config.lr_min_factor,
                       batch_size=config.batch_size, fiber_fraction=config.fiber_fraction,
                       schedule_meta_epochs=config.schedule_meta_epochs)


def check_cnf_config(config: Any) -> None:
    if config.normalization not in NORMALIZATIONS:
        raise UserError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, "
                        f"got {config.normalization!r}")
    if config.padding not in PADDINGS:
        raise UserError(f"padding must be one of {', '.join(PADDINGS)}, got {config.padding!r}")
    if config.condition_dim % 4:
        raise UserError(f"condition_dim must be a multiple of 4, got {config.condition_dim}")
    if not 0.0 < config.fiber_fraction <= 1.0:
        raise UserError(f"fiber_fraction must be in (0, 1], got {config.fiber_fraction}")
    if config.n_blocks < 1:
        raise UserError(f"n_blocks must be >= 1, got {config.n_blocks}")
    if config.meta_epochs < 1 or config.schedule_meta_epochs < 1 or config.warm_epochs < 0:
        raise UserError("meta_epochs and schedule_meta_epochs must be >= 1, warm_epochs >= 0")


class NFScorer:
    """Reference maxima of the training set and the A_nf map (Alg. 2, steps 2-1 and 2-2)."""

    def __init__(self, flows: nn.ModuleList, cond_dim: int, device: torch.device):
        self.flows, self.cond_dim, self.device = flows, cond_dim, device
        self.train_maxima: list[float] = []
        self.train_n_max = 0.0

    def calibrate(self, train_features: list[torch.Tensor], size: int) -> None:
        """``u_i`` over the training images (Eq. 4) and the training-set max of ``N``."""
        log_maps = log_likelihood_maps(self.flows, train_features, self.cond_dim, self.device)
        self.train_maxima = layer_maxima(log_maps)
        self.train_n_max = float(normal_score_map(log_maps, self.train_maxima, size).max())

    def anomaly(self, features: list[torch.Tensor], size: int, per_layer: str, final: str
                ) -> torch.Tensor:
        """``A_nf [N, size, size]`` with per-map maxima from ``per_layer`` and ``n_max`` from
        ``final`` ("train" or "scored": the set being scored, i.e. transductive)."""
        log_maps = log_likelihood_maps(self.flows, features, self.cond_dim, self.device)
        maxima = self.train_maxima if per_layer == "train" else layer_maxima(log_maps)
        normal = normal_score_map(log_maps, maxima, size)
        if final == "train" and per_layer == "train":
            n_max = self.train_n_max
        else:
            n_max = float(normal.max())
        return anomaly_from_normal(normal, n_max)

    def state(self) -> dict:
        return {"train_maxima": torch.tensor(self.train_maxima, dtype=torch.float64),
                "train_n_max": torch.tensor(self.train_n_max, dtype=torch.float64)}

    def load(self, state: dict) -> None:
        self.train_maxima = [float(v) for v in state["train_maxima"].tolist()]
        self.train_n_max = float(state["train_n_max"])


# ------------------------------------------------------------------------------------------
# the detector
# ------------------------------------------------------------------------------------------

@register_method("cflow")
class CFlowDetector:
    """CFlow-AD: conditional normalizing flows on frozen WideResNet-50-2 feature fibers."""

    Config = CFlowConfig
    #: settings for a seconds-long run (conformance tests, CI smoke)
    smoke_settings = {"backbone": "efficientnet_lite0", "input_size": 128, "padding": "zeros",
                      "n_blocks": 2, "meta_epochs": 2, "sub_epochs": 1, "warm_epochs": 1,
                      "fiber_fraction": 0.25, "reuse_stages": False}

    def __init__(self, config: CFlowConfig = CFlowConfig()):
        check_cnf_config(config)
        self.config = config
        self.device = resolve_device(config.device)
        self.flows: nn.ModuleList | None = None
        self.scorer: NFScorer | None = None
        self._channels: list[int] = []

    def _features(self, images: ImageSet) -> list[torch.Tensor]:
        cfg = self.config
        return frozen_features(cfg.backbone, cfg.layers, cfg.padding, images, self.device)[0]

    def fit(self, train: ImageSet, evaluate: Callable[[str], None] | None = None
            ) -> "CFlowDetector":
        """``evaluate(label)``, if given, is called after every meta-epoch (where CFlow-AD
        tested, nfbench.protocols), with the detector scorable; it must not change it."""
        self.config = cfg = apply_category_settings(self.config, category_of(train))
        check_cnf_config(cfg)
        seed = int(torch.initial_seed())
        cache = StageCache(cfg.reuse_stages)
        features, source = frozen_features(cfg.backbone, cfg.layers, cfg.padding, train,
                                           self.device)
        self._channels = [f.shape[1] for f in features]

        def at_meta_epoch(meta: int, flows: nn.ModuleList) -> None:
            self.flows, self.scorer = flows, NFScorer(flows, cfg.condition_dim, self.device)
            self.scorer.calibrate(features, cfg.input_size)
            evaluate(f"meta-epoch {meta}/{cfg.meta_epochs}")

        self.flows = fit_cnf_stage(features, source, cnf_settings(cfg), train, seed, self.device,
                                   cache, desc="cflow fit",
                                   on_meta_epoch=at_meta_epoch if evaluate is not None else None)
        self.fit_info_ = {"schedule": schedule_info(cnf_settings(cfg))}
        self.scorer = NFScorer(self.flows, cfg.condition_dim, self.device)
        self.scorer.calibrate(features, cfg.input_size)
        return self

    def anomaly_map(self, images: ImageSet) -> torch.Tensor:
        """``A_nf [N, S, S]`` (float64) under the configured normalisation."""
        if self.scorer is None:
            raise RuntimeError("CFlowDetector used before fit")
        mode = "train" if self.config.normalization == "inductive" else "scored"
        return self.scorer.anomaly(self._features(images), images.size, mode, mode)

    def score(self, images: ImageSet) -> Scores:
        """Transductive by default (CFlow-AD): the maxima are taken over ``images``, so pass
        the whole test set at once."""
        pixel = self.anomaly_map(images)
        return Scores(image=pixel.flatten(1).max(dim=1).values.numpy(), pixel=pixel.float().numpy())

    def state_dict(self) -> dict:
        if self.flows is None or self.scorer is None:
            raise RuntimeError("CFlowDetector has no state before fit")
        return {"flows": self.flows.state_dict(), "channels": torch.tensor(self._channels),
                **self.scorer.state()}

    def load_state_dict(self, state: dict) -> None:
        self._channels = [int(c) for c in state["channels"].tolist()]
        self.flows = build_flows(self._channels, cnf_settings(self.config), seed=0,
                                 draw_permutations=False).to(self.device)
        self.flows.load_state_dict(state["flows"])
        self.flows.eval()
        self.scorer = NFScorer(self.flows, self.config.condition_dim, self.device)
        self.scorer.load(state)

    # -- profiling --------------------------------------------------------------------
    def components(self) -> dict[str, nn.Module]:
        """The model pieces whose float parameters Table 3 counts: FE and CNFs."""
        if self.flows is None:
            raise RuntimeError("CFlowDetector used before fit")
        cfg = self.config
        return {"FE": build_encoder(cfg.backbone, cfg.layers, cfg.padding, False, self.device),
                "CNFs": self.flows}

    def inference_module(self) -> nn.Module:
        """Images in [0, 1] -> image scores (encoder, flows, maps), with the training-set
        maxima (the inductive form; the transductive one costs the same plus a max)."""
        if self.flows is None or self.scorer is None:
            raise RuntimeError("CFlowDetector used before fit")
        parts = self.components()
        return NFInference(parts["FE"], self.flows, self.scorer, self.config.condition_dim,
                           self.config.input_size)


class NFInference(nn.Module):
    """encoder -> conditional flows -> A_nf (-> + w A_p) -> max, for FLOPs and timing.

    ``classifier`` maps encoder maps to the probability map A_p; it reads the maps of
    ``classifier_encoder`` when given (CLS-CNFs-nsFE), else those of ``encoder`` (shared)."""

    def __init__(self, encoder: nn.Module, flows: nn.ModuleList, scorer: NFScorer, cond_dim: int,
                 size: int, classifier: nn.Module | None = None, w: float = 0.0,
                 classifier_encoder: nn.Module | None = None):
        super().__init__()
        self.encoder, self.flows, self.classifier = encoder, flows, classifier
        self.classifier_encoder = classifier_encoder
        self.scorer, self.cond_dim, self.size, self.w = scorer, cond_dim, size, w

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from nfbench.methods.cflow.flow import fibers, log_likelihood, positional_encoding_2d

        maps = self.encoder(images)
        normal = 0.0
        for flow, fmap, u in zip(self.flows, maps, self.scorer.train_maxima):
            b, c, h, w = fmap.shape
            y, cond = fibers(fmap, positional_encoding_2d(self.cond_dim, h, w).to(fmap))
            z, log_jac = flow(y, c=[cond])
            log_p = (log_likelihood(z, log_jac) / c).reshape(b, 1, h, w)
            normal = normal + F.interpolate(torch.exp(log_p - u), size=(self.size, self.size),
                                            mode="bilinear", align_corners=True)
        score_map = self.scorer.train_n_max - normal
        if self.classifier is not None:  # A = A_nf + w A_p (Eq. 9)
            cls_maps = maps if self.classifier_encoder is None else self.classifier_encoder(images)
            score_map = score_map + self.w * self.classifier(cls_maps)
        return score_map.flatten(1).max(dim=1).values
