"""CLS-CNFs (Oh & Kim, IEEE Access 2024): a pixelwise classification network trained on
synthetic defects fine-tunes the feature extractor of CFlow-AD's conditional flows; the anomaly
map is ``A = A_nf + w A_p`` (Alg. 1, Alg. 2, Eq. 1-9).

Training (Alg. 1):

1. *FE stage* (:mod:`.finetune`, ``finetune="cls"``): the ImageNet encoder and the shallow
   decoder (:mod:`.decoder`) learn to segment synthetic defects (:mod:`nfbench.methods.synthetic`);
   ``finetune="reg"`` is the FE_REG ablation, ``finetune="none"`` the frozen ImageNet encoder
   (FE_PRE).
2. *CNF stage*: three conditional flows (:mod:`nfbench.methods.cnf`) on the fibers of the
   (fine-tuned) encoder's stride-8/16/32 maps of the normal training images.

Scoring (Alg. 2): ``A_nf = n_max - sum_i up(exp(log p_i / C_i - u_i))`` with ``u_i`` the
training-set maxima (Eq. 4); ``A_p`` the decoder's defect probability; ``A = A_nf + w A_p``
(Eq. 9); the image score is the maximum of the map.

* ``normalization="transductive"`` (the paper, Eq. 8): ``n_max`` is the maximum over the whole
  scored set; ``score(images)`` receives the whole test set at once. It shifts every score of
  a test set by one constant, so no metric differs from ``inductive`` (``n_max`` over the
  training images); the absolute values (and thresholds) do.
* ``score_map``: ``joint`` (A), ``nf`` (A_nf) or ``cls`` (A_p; the flows are not trained).
* ``shared_encoder=False`` (CLS-CNFs-nsFE): the flows run on the frozen ImageNet encoder
  (they are FE_PRE-CNFs) and the classifier on its own fine-tuned encoder.
* ``w``: a number; ``"original"``, the per-category values of the original run scripts
  (:data:`ORIGINAL_W`), which the paper chose by pixel AUPR on the *test* set (test-tuned),
  with ``w_fallback`` for other categories; or ``"synthetic"``, chosen by pixel AUPR on a
  synthetic validation set made from the training images only (half with defects;
  :mod:`.w_selection`). The value used is ``w_`` (the record's config lists it as
  ``w_chosen``).

The networks are :class:`.torch_model.CLSCNFModel`. ``score()`` runs its forward over the
scored set: the fine-tuned encoder and decoder in batches of 16 (:meth:`CLSCNFModel.encode`),
the frozen encoder's maps from the shared feature cache where the flows read those, then the
flows' map over the whole set, inductive as in the forward or, for ``transductive``, with
``n_max`` over the scored set (a set-level step). ``inference_module(component)`` is the
model of a Table 3 row (default: this configuration), with the training-set ``n_max``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from nfbench.datasets.base import ImageSet
from nfbench.errors import check_choice
from nfbench.methods import register_method
from nfbench.methods.clscnf.protocol import CLSCNFProtocol
from nfbench.methods.base import ProfilingNotSupported, Scores, resolve_device
from nfbench.methods.clscnf import w_selection
from nfbench.methods.clscnf.config import CLSCNFConfig
from nfbench.methods.clscnf.decoder import PixelDecoder
from nfbench.methods.clscnf.finetune import fit_fe, new_decoder
from nfbench.methods.clscnf.torch_model import CLSCNFModel
from nfbench.methods.cnf.config import apply_category_settings, category_of
from nfbench.methods.cnf.encoder import LAYERS, build_encoder, extract, frozen_features
from nfbench.methods.cnf.flows import build_flows
from nfbench.methods.cnf.scoring import NFMap, image_scores
from nfbench.methods.cnf.stage import StageCache, cnf_work_items, fit_cnf_stage
from nfbench.methods.cnf.training import schedule_info

#: Table 3's rows (benchmarks/clscnf.yaml): FE, the classifier, the CNFs on the fine-tuned FE,
#: the proposed shared-FE network and the non-shared one.
COMPONENTS = ("FE", "CLS", "FE_CLS-CNFs", "CLS-CNFs-sFE", "CLS-CNFs-nsFE")


@register_method("clscnf")
class CLSCNFDetector:
    """CLS-CNFs: pixelwise defect classifier + conditional flows sharing a fine-tuned encoder.

    After ``fit``: ``settings_`` (the config with the category's ``category_settings``
    applied), ``category_``, ``encoder_`` (fine-tuned; None for ``finetune=none``),
    ``decoder_`` (classification decoder; ``finetune=cls`` only), ``nf_`` (the flows with the
    training-set maxima; None for ``score_map=cls``), ``channels_``, ``fe_history_`` (FE loss
    per meta-epoch), ``w_`` (the w used; NaN unless ``score_map=joint``) and ``fit_info_``."""

    Config = CLSCNFConfig
    #: settings for a seconds-long run (conformance tests, CI smoke)
    smoke_settings = {"backbone": "efficientnet_lite0", "input_size": 128, "padding": "zeros",
                      "foreign_source": "procedural", "decoder_blocks": [1, 1, 1, 1],
                      "fe_freeze_epochs": 1, "fe_meta_epochs": 1, "fe_sub_epochs": 1,
                      "fe_repeat": 1, "fe_batch_size": 8, "n_blocks": 2, "meta_epochs": 2,
                      "sub_epochs": 1, "warm_epochs": 1, "fiber_fraction": 0.25,
                      "reuse_stages": False}
    profiling_components = COMPONENTS
    #: the original's evaluation protocol, measured beside the honest numbers
    original_protocol = CLSCNFProtocol
    #: runs share trained stages (encoders, flows) through :mod:`nfbench.methods.cnf.stage`
    shares_stages = True

    @staticmethod
    def work_items(config: dict, work) -> None:
        """The cost model's work of a run: the encoder fine-tuning (FE stage: the encoder's
        forward in decoder-only meta-epochs, 3x in the others, times fe_sub_epochs x
        fe_repeat), the features the flows read (the fine-tuned encoder's, or the frozen
        one's for CLS-CNFs-nsFE), the CNF stage."""
        c = config
        work.feature_source = work.feature_key("cnf")
        if c.get("finetune", "none") != "none":
            fe_fields = {k: v for k, v in c.items()
                         if k.startswith(("fe_", "decoder_")) or k in (
                             "backbone", "input_size", "padding", "finetune", "object_mask",
                             "foreign_source", "regen_every")}
            fe_key = work.key("fe", work.data, work.seed, fe_fields)
            passes = c.get("fe_sub_epochs", 1) * c.get("fe_repeat", 1)
            work.add("train", fe_key, work.n_train * passes * work.extractor
                     * (c.get("fe_freeze_epochs", 0) + 3 * c.get("fe_meta_epochs", 0)))
            if c.get("shared_encoder", True):  # the flows read the fine-tuned encoder's features
                work.feature_source = fe_key
        work.add_features()
        cnf_work_items(config, work)

    @staticmethod
    def category_config(config, category: str | None):
        """The config a run of ``category`` uses: its params.yaml ``category_settings``."""
        return apply_category_settings(config, category)

    @staticmethod
    def needed_datasets(config) -> tuple[str, ...]:
        """DTD, where the synthetic defects paste DTD textures (``foreign_source: dtd``)."""
        return ("dtd",) if config.foreign_source == "dtd" else ()

    def __init__(self, config: CLSCNFConfig = CLSCNFConfig()):
        self.config = config
        self.device = resolve_device(config.device)
        self._forget()

    def _forget(self) -> None:
        """The unfitted state: a new ``fit`` starts from it, so that nothing of an earlier
        fit (another category's encoders, maps, w or schedule) survives a refit."""
        self.settings_ = self.config  # the config until fit resolves a category's settings
        self.fit_info_: dict[str, Any] | None = None
        self.category_: str | None = None
        self.encoder_: nn.Module | None = None
        self.decoder_: PixelDecoder | None = None
        self.nf_: NFMap | None = None
        self.channels_: list[int] = []
        self.fe_history_: list[float] = []
        self.w_: float = float("nan")
        self._frozen: nn.Module | None = None  # the frozen ImageNet encoder, built when needed
        self._untrained: dict[bool, dict[str, Any]] = {}  # profiling networks before fit

    @property
    def resolved_settings_(self) -> dict[str, Any]:
        """What fit resolved that the run's record lists with its config."""
        return {"w_chosen": self.w_}

    def _frozen_encoder(self) -> nn.Module:
        if self._frozen is None:
            cfg = self.settings_
            self._frozen = build_encoder(cfg.backbone, LAYERS, cfg.padding, False, self.device)
        return self._frozen

    # -- Detector protocol ---------------------------------------------------------------
    def fit(self, train: ImageSet) -> "CLSCNFDetector":
        self._forget()
        self.category_ = category_of(train)
        self.settings_ = cfg = apply_category_settings(self.config, self.category_)
        seed = int(torch.initial_seed())
        cache = StageCache(cfg.reuse_stages)
        images = train.load_images()
        fe_key = None
        if cfg.finetune != "none":
            stage = fit_fe(cfg, self.category_, train, images, seed, cache, self.device)
            self.encoder_, self.decoder_ = stage.encoder, stage.decoder
            self.channels_, self.fe_history_, fe_key = stage.channels, stage.history, stage.key
        if cfg.needs_nf:
            if cfg.nf_on_frozen:
                features, source = frozen_features(cfg.backbone, LAYERS, cfg.padding, train,
                                                   self.device)
            else:
                features = extract(self.encoder_, images, self.device,
                                   desc="features (fine-tuned)")
                source = {"encoder": "fine-tuned", "fe_stage": fe_key}
            self.channels_ = [f.shape[1] for f in features]
            flows, history = fit_cnf_stage(features, source, cfg, train, seed, self.device,
                                           cache, desc="clscnf CNF fit",
                                           # a stage on frozen features is also CFlow's: keep
                                           # what CFlow-AD's protocol replays
                                           keep_snapshots=cfg.nf_on_frozen)
            self.fit_info_ = {"schedule": schedule_info(cfg), "loss_per_epoch": history,
                              "loss_epoch": "CNF meta-epoch"}
            self.nf_ = NFMap(flows, cfg.condition_dim)
            self.nf_.calibrate(features, cfg.input_size)
        if cfg.finetune != "none":  # the encoder fine-tuning's curve beside the CNF's
            self.fit_info_ = {"loss_per_epoch": list(self.fe_history_),
                              "loss_epoch": "FE meta-epoch", **(self.fit_info_ or {}),
                              "fe_loss_per_epoch": list(self.fe_history_)}
        self.w_ = w_selection.resolve_w(cfg, self.category_, images, seed, self._score_maps)
        return self

    def synthetic_validation_set(self, images: torch.Tensor, seed: int
                                 ) -> tuple[torch.Tensor, np.ndarray]:
        """:func:`.w_selection.synthetic_validation_set` for this detector's category."""
        return w_selection.synthetic_validation_set(self.settings_, self.category_, images, seed)

    def choose_w_synthetic(self, images: torch.Tensor, seed: int) -> tuple[float, dict]:
        """:func:`.w_selection.choose_w_synthetic` with this detector's maps."""
        return w_selection.choose_w_synthetic(self.settings_, self.category_, images, seed,
                                              self._score_maps)

    def _network(self, kind: str | None = None, parts: dict[str, Any] | None = None,
                 with_frozen: bool = False) -> CLSCNFModel:
        """The :class:`CLSCNFModel` of Table 3 row ``kind`` (default: this configuration)
        from ``parts`` (default: the fitted networks). The frozen encoder of the nsFE and
        FE_PRE networks is built only ``with_frozen`` (``score`` brings its features)."""
        cfg = self.settings_
        if parts is None:
            parts = {"encoder": self.encoder_, "decoder": self.decoder_, "nf": self.nf_,
                     "frozen": self._frozen, "w": self.w_}
        if kind is None:
            kind = {"cls": "CLS", "nf": "FE_CLS-CNFs", "joint": "CLS-CNFs-sFE"}[cfg.score_map]
            if cfg.score_map != "cls" and cfg.nf_on_frozen:
                kind = "CLS-CNFs-nsFE" if cfg.score_map == "joint" else "FE_PRE-CNFs"
        if kind == "FE":
            raise ProfilingNotSupported("FE is a bare feature extractor: it has no images -> "
                                        "scores network (size only)", sized=parts["encoder"])
        needs = {"CLS": ("encoder", "decoder"), "FE_CLS-CNFs": ("encoder", "nf"),
                 "FE_PRE-CNFs": ("nf",), "CLS-CNFs-sFE": ("encoder", "decoder", "nf"),
                 "CLS-CNFs-nsFE": ("encoder", "decoder", "nf")}
        check_choice("clscnf component", kind, COMPONENTS + ("FE_PRE-CNFs",))
        if any(parts[name] is None for name in needs[kind]):
            raise RuntimeError(f"{kind} needs a fitted detector with its networks "
                               f"({', '.join(needs[kind])})")
        w = parts["w"] if math.isfinite(parts["w"]) else 1.0
        score_map = {"CLS": "cls", "FE_CLS-CNFs": "nf", "FE_PRE-CNFs": "nf"}.get(kind, "joint")
        frozen = kind in ("FE_PRE-CNFs", "CLS-CNFs-nsFE")
        if frozen and with_frozen and parts["frozen"] is None:
            parts = {**parts, "frozen": self._frozen_encoder()}
        return CLSCNFModel(score_map, encoder=parts["encoder"] if kind != "FE_PRE-CNFs" else None,
                           decoder=parts["decoder"] if score_map != "nf" else None,
                           nf=parts["nf"] if score_map != "cls" else None, shared=not frozen,
                           nf_encoder=parts["frozen"] if frozen else None, w=w)

    @torch.no_grad()
    def _score_maps(self, images: ImageSet | torch.Tensor, final: str) -> dict[str, torch.Tensor]:
        """``{"nf": A_nf, "cls": A_p}`` as needed, ``[N, S, S]`` float64 (CPU)."""
        cfg = self.settings_
        model = self._network()
        size = images.size if isinstance(images, ImageSet) else images.shape[-1]
        maps: dict[str, torch.Tensor] = {}
        nf_features = None
        if model.runs_encoder:
            feats, probs = [], []
            n = len(images)
            for start in range(0, n, 16):
                idx = range(start, min(start + 16, n))
                batch = images.load_images(idx) if isinstance(images, ImageSet) else images[start:idx.stop]
                shared_maps, prob = model.encode(batch.to(self.device))
                if shared_maps is not None:
                    feats.append([m.float().cpu() for m in shared_maps])
                if prob is not None:
                    probs.append(prob)
            if feats:
                nf_features = [torch.cat(parts) for parts in zip(*feats)]
            if probs:
                maps["cls"] = torch.cat(probs)
        if model.nf is not None:
            if nf_features is None:  # the frozen encoder's maps
                if isinstance(images, ImageSet):
                    nf_features = frozen_features(cfg.backbone, LAYERS, cfg.padding, images,
                                                  self.device)[0]
                else:
                    nf_features = extract(self._frozen_encoder(), images, self.device)
            maps["nf"] = model.nf.anomaly(model.nf.log_maps(nf_features), size, "train", final)
        return maps

    def score_maps(self, images: ImageSet) -> dict[str, torch.Tensor]:
        """Every map this configuration has, under its normalisation: ``nf`` (A_nf),
        ``cls`` (A_p) and, for ``score_map=joint``, ``joint`` (A = A_nf + w A_p)."""
        cfg = self.settings_
        if (cfg.needs_nf and self.nf_ is None) or (cfg.needs_cls and self.decoder_ is None):
            raise RuntimeError("CLSCNFDetector used before fit")
        final = "scored" if cfg.normalization == "transductive" else "train"
        maps = self._score_maps(images, final)
        if cfg.score_map == "joint":
            maps["joint"] = self._network().combine(maps)  # Eq. 9
        return maps

    def score(self, images: ImageSet) -> Scores:
        """Under ``normalization="transductive"`` (the paper) ``n_max`` is taken over
        ``images``: pass the whole test set at once."""
        image, pixel = image_scores(self.score_maps(images)[self.settings_.score_map])
        return Scores(image=image.numpy(), pixel=pixel.float().numpy())

    def state_dict(self) -> dict:
        cfg = self.settings_
        if ((cfg.needs_nf and self.nf_ is None)
                or (cfg.finetune != "none" and self.encoder_ is None)):
            raise RuntimeError("CLSCNFDetector has no state before fit")
        state: dict[str, Any] = {"channels": torch.tensor(self.channels_),
                                 "w_used": torch.tensor(self.w_, dtype=torch.float64)}
        if self.encoder_ is not None:
            state["encoder"] = self.encoder_.state_dict()
        if self.decoder_ is not None:
            state["decoder"] = self.decoder_.state_dict()
        if self.nf_ is not None:
            state["flows"] = self.nf_.flows.state_dict()
            state.update(self.nf_.reference_state())
        return state

    def load_state_dict(self, state: dict) -> None:
        cfg = self.settings_
        self.channels_ = [int(c) for c in state["channels"].tolist()]
        self.w_ = float(state["w_used"])
        if "encoder" in state:
            self.encoder_ = build_encoder(cfg.backbone, LAYERS, cfg.padding, False, self.device)
            self.encoder_.load_state_dict(state["encoder"])
        if "decoder" in state:
            self.decoder_ = new_decoder(cfg, self.channels_).to(self.device)
            self.decoder_.load_state_dict(state["decoder"])
            self.decoder_.eval()
        if "flows" in state:
            flows = build_flows(self.channels_, cfg, seed=0, draw_permutations=False)
            flows = flows.to(self.device)
            flows.load_state_dict(state["flows"])
            self.nf_ = NFMap(flows.eval(), cfg.condition_dim)
            self.nf_.load_reference(state)

    # -- profiling (Table 3) -----------------------------------------------------------
    def _untrained_parts(self, pretrained: bool) -> dict[str, Any]:
        """Every network of Table 3 at its initialisation (encoder weights only if
        ``pretrained``), without fitting: size, FLOPs and speed do not depend on the weights,
        and profiling the paper configuration must not need a dataset or a download."""
        if pretrained not in self._untrained:
            cfg = self.settings_
            frozen = build_encoder(cfg.backbone, LAYERS, cfg.padding, False, self.device,
                                   pretrained)
            encoder = build_encoder(cfg.backbone, LAYERS, cfg.padding, False, self.device,
                                    pretrained)
            channels = encoder.channels()
            # no random rotations drawn (a QR per block, seconds at the paper's widths): they
            # change no FLOP count, size or speed
            flows = build_flows(channels, cfg, seed=0, draw_permutations=False)
            flows = flows.to(self.device).eval()
            self._untrained[pretrained] = {
                "encoder": encoder, "frozen": frozen, "w": 1.0,
                "decoder": new_decoder(cfg, channels).to(self.device).eval(),
                "nf": NFMap(flows, cfg.condition_dim)}
        return self._untrained[pretrained]

    def inference_module(self, component: str | None = None,
                         pretrained: bool = True) -> nn.Module:
        """:class:`CLSCNFModel` of Table 3 row ``component`` (one of
        :attr:`profiling_components`, or ``FE_PRE-CNFs``; default: this configuration):
        images in [0, 1] -> (image scores, map), with the training-set ``n_max`` (the
        inductive form; the transductive one costs the same plus one max over the set).
        ``FE`` raises :class:`ProfilingNotSupported` carrying the encoder to size. Before
        fit, the networks are untrained (``pretrained`` encoder weights or not)."""
        fitted = self.encoder_ is not None or self.nf_ is not None
        parts = None if fitted else self._untrained_parts(pretrained)
        return self._network(component, parts, with_frozen=True).eval()
