"""CLS-CNFs (Oh & Kim, IEEE Access 2024): a pixelwise classification network trained on
synthetic defects fine-tunes the feature extractor of CFlow-AD's conditional flows; the anomaly
map is ``A = A_nf + w A_p`` (Alg. 1, Alg. 2, Eq. 1-9).

Training (Alg. 1):

1. *FE stage* (``finetune="cls"``): the ImageNet encoder (WideResNet-50-2; offline:
   EfficientNet-Lite0) and the shallow decoder (:mod:`.decoder`) learn to segment synthetic
   defects (:mod:`.synthetic`) with the soft-label cross-entropy (Eq. 1): decoder only for
   ``fe_freeze_epochs`` (N_pD), then encoder and decoder for ``fe_meta_epochs``. The encoder
   stays in eval mode, so its BatchNorm statistics remain ImageNet's (§IV-B). Synthetic
   defects are redrawn every ``regen_every`` passes (N_s; the original code redraws every
   sample on every access, i.e. ``regen_every=1``). ``finetune="reg"`` is the FE_REG ablation:
   a reconstruction network without skip connections regresses the normal training images.
   ``finetune="none"``: the frozen ImageNet encoder (FE_PRE).
2. *CNF stage*: three conditional flows (:mod:`nfbench.methods.cflow.flow`) on the fibers of
   the (fine-tuned) encoder's stride-8/16/32 maps of the normal training images.

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
  synthetic validation set made from the training images only (half with defects).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nfbench.backbones import get_backbone_spec
from nfbench.datasets.base import ImageSet
from nfbench.errors import UserError
from nfbench.methods import register_method
from nfbench.progress import bars_enabled
from nfbench.methods.base import Scores, descent_step, resolve_device
from nfbench.methods.cflow.model import (LAYERS, NFInference, NFScorer, StageCache,
                                         apply_category_settings, build_encoder, category_of,
                                         check_cnf_config, cnf_settings, code_digest, extract,
                                         fit_cnf_stage, frozen_features)
from nfbench.methods.cflow.flow import build_flows, schedule_info
from nfbench.methods.clscnf.decoder import PixelDecoder, ProbabilityHead
from nfbench.methods.synthetic import (SOURCE_FILES as SYNTHETIC_SOURCES, DefectSynthesizer,
                                      DTDTextures, SyntheticSettings, object_mask_rule,
                                      procedural_texture)
from nfbench.paths import datasets_root

#: w per category in the original run scripts (AD-CLSCNFs run_scripts/<ds>/<cls>/
#: train_eval_total.sh, ``--w_fe``; original-code.md §1b). The paper (§IV-B) chose w "for each
#: category in a way such that the AUPR score was maximized", and the code's ``--get_best_w_fe``
#: searches {0.05, ..., 1.0} by pixel AUPR against the TEST ground truth: these are test-tuned.
ORIGINAL_W: dict[str, float] = {
    "bottle": 0.3, "cable": 0.05, "capsule": 0.3, "carpet": 1.0, "grid": 1.0, "hazelnut": 1.0,
    "leather": 1.0, "metal_nut": 0.5, "pill": 1.0, "screw": 1.0, "tile": 1.0, "toothbrush": 1.0,
    "transistor": 0.6, "wood": 1.0, "zipper": 0.15,  # MVTec AD
    "01": 0.1, "02": 0.05, "03": 0.3,  # BTAD
}
#: The original's search grid for w (evaluate.py ``--get_best_w_fe``).
W_GRID = tuple(round(0.05 * k, 2) for k in range(1, 21))

FINETUNES = ("cls", "reg", "none")
SCORE_MAPS = ("joint", "nf", "cls")
FOREIGN_SOURCES = ("dtd", "procedural")


@dataclass(frozen=True)
class CLSCNFConfig:
    """Defaults: the paper (§III, §IV-B) completed by AD-CLSCNFs' config.py and run scripts."""

    backbone: str = "wide_resnet50_2"  # §III-B2: ImageNet WRN50-2 (torchvision 95faca4d = timm .tv_in1k)
    input_size: int = 256  # §IV-B: 256 x 256 for every category
    padding: str = "reflect"  # model.py load_encoder_arch: padding_mode='reflect'
    finetune: str = "cls"  # cls (FE_CLS) | reg (FE_REG, Table 1) | none (FE_PRE)
    # FE_REG loss. l1_sigmoid: the original's (sigmoid output, ImageNet-normalised, L1 summed
    # over RGB) | mse_linear: linear output, squared error summed over RGB (ours before issue 11)
    fe_reg_loss: str = "l1_sigmoid"
    score_map: str = "joint"  # joint A (Eq. 9) | nf A_nf | cls A_p (Table 2)
    shared_encoder: bool = True  # True: CLS-CNFs-sFE (proposed); False: CLS-CNFs-nsFE
    normalization: str = "transductive"  # Eq. 8: n_max over the test set | inductive: train set
    w: Any = "original"  # float | "original" (test-tuned table) | "synthetic"
    w_fallback: float = 1.0  # w for categories outside ORIGINAL_W (its most frequent value)
    w_grid: tuple[float, ...] = W_GRID  # evaluate.py --get_best_w_fe grid
    w_chosen: float = float("nan")  # OUTPUT: the w a fitted run used (fit fills it in; input ignored)
    # synthetic defects (§III-A; synthetic_data_loader.py)
    object_mask: str = "auto"  # auto: the original's per-category rules | dark | bright | none
    foreign_source: str = "dtd"  # §III-A: DTD | procedural (offline stand-in)
    dtd_root: str = ""  # DTD folder; "" = <datasets>/dtd
    in_domain_prob: float = 0.5  # config use_in_domain_data: half in-domain sources
    beta_max: float = 0.8  # beta ~ U(0, 0.8)
    perlin_max_exponent: int = 6  # Perlin lattice 2^randint(0, 6)
    perlin_threshold: float = 0.5
    soft_label: str = "image"  # image: one value per defect (code) | pixel: per pixel (paper)
    label_gain: float = 5.0  # sigmoid(5 * colour difference)
    regen_every: int = 1  # N_s in passes; the code redraws every sample on access (= 1)
    # FE stage (finetune_enc.py; run scripts: most MVTec categories)
    fe_lr: float = 1e-4  # run scripts (config default 2e-4)
    fe_weight_decay: float = 1e-4  # config w_decay
    fe_batch_size: int = 32  # run scripts: 32 or 16
    fe_freeze_epochs: int = 85  # N_pD: decoder-only meta-epochs (run scripts: 85)
    fe_meta_epochs: int = 15  # encoder + decoder meta-epochs (run scripts: 15)
    fe_sub_epochs: int = 2  # passes per meta-epoch (run scripts: 2)
    fe_repeat: int = 5  # config repeat_num: each pass sees every image 5 times
    fe_lr_min_factor: float = 1e-3  # cosine eta_min = lr * 0.1^3, no warm-up (--lr_warm no)
    decoder_blocks: tuple[int, ...] = (3, 6, 4, 3)  # WideResNetDec([3, 6, 4, 3])
    decoder_width_scale: float = 0.25  # §III-B2: 1/4 of the encoder's channels
    decoder_prior: float = 0.0  # 0: Kaiming init as the original; p > 0: start at A_p = p
    # CNF stage (train_CNFs_finetune.py; same names as cflow's)
    n_blocks: int = 6  # §III-B3 / config coupling_blocks
    condition_dim: int = 128
    clamp: float = 1.9
    permute_soft: bool = True
    fiber_batch: int = 256
    lr: float = 2e-4
    meta_epochs: int = 25
    sub_epochs: int = 8
    warm_epochs: int = 2  # of schedule_meta_epochs; scaled to meta_epochs as in cflow (fit_info_)
    schedule_meta_epochs: int = 25  # AD-CLSCNFs config.py meta_epochs (BTAD scripts: 8)
    lr_min_factor: float = 1e-3
    batch_size: int = 32
    fiber_fraction: float = 1.0  # share of fibers used per batch (budget knob; original 1.0)
    #: per-category overrides of any other field (benchmark data: FE lr/epochs/batch, CNF lr)
    category_settings: dict = field(default_factory=dict)
    reuse_stages: bool = True  # reuse identical trained stages from the on-disk cache
    device: str = "auto"


def parse_w(value: Any) -> float | str:
    """``w`` as a float, or one of ``"original"`` / ``"synthetic"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        if value in ("original", "synthetic"):
            return value
        try:
            return float(value)
        except ValueError:
            pass
    raise UserError(f"w must be a number, 'original' or 'synthetic', got {value!r}")


def _check(cfg: CLSCNFConfig) -> None:
    check_cnf_config(cfg)
    for name, value, allowed in (("finetune", cfg.finetune, FINETUNES),
                                 ("score_map", cfg.score_map, SCORE_MAPS),
                                 ("foreign_source", cfg.foreign_source, FOREIGN_SOURCES),
                                 ("soft_label", cfg.soft_label, ("image", "pixel")),
                                 ("fe_reg_loss", cfg.fe_reg_loss, ("l1_sigmoid", "mse_linear"))):
        if value not in allowed:
            raise UserError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    if cfg.score_map != "nf" and cfg.finetune != "cls":
        raise UserError(f"score_map={cfg.score_map} needs the classification network "
                        f"(finetune=cls), got finetune={cfg.finetune}")
    if not cfg.shared_encoder and cfg.finetune != "cls":
        raise UserError("shared_encoder=false (CLS-CNFs-nsFE) needs finetune=cls")
    if cfg.input_size % 32:
        raise UserError(f"input_size must be a multiple of 32, got {cfg.input_size}")
    if len(cfg.decoder_blocks) != 4:
        raise UserError("decoder_blocks needs 4 entries")
    if cfg.regen_every < 1 or cfg.fe_repeat < 1 or cfg.fe_sub_epochs < 1:
        raise UserError("regen_every, fe_repeat and fe_sub_epochs must be >= 1")
    parse_w(cfg.w)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()


@register_method("clscnf")
class CLSCNFDetector:
    """CLS-CNFs: pixelwise defect classifier + conditional flows sharing a fine-tuned encoder."""

    Config = CLSCNFConfig
    #: settings for a seconds-long run (conformance tests, CI smoke)
    smoke_settings = {"backbone": "efficientnet_lite0", "input_size": 128, "padding": "zeros",
                      "foreign_source": "procedural", "decoder_blocks": [1, 1, 1, 1],
                      "fe_freeze_epochs": 1, "fe_meta_epochs": 1, "fe_sub_epochs": 1,
                      "fe_repeat": 1, "fe_batch_size": 8, "n_blocks": 2, "meta_epochs": 2,
                      "sub_epochs": 1, "warm_epochs": 1, "fiber_fraction": 0.25,
                      "reuse_stages": False}

    def __init__(self, config: CLSCNFConfig = CLSCNFConfig()):
        _check(config)
        self.config = config
        self.device = resolve_device(config.device)
        self.encoder: nn.Module | None = None  # fine-tuned encoder (finetune != none)
        self.decoder: PixelDecoder | None = None  # classification decoder (finetune == cls)
        self.flows: nn.ModuleList | None = None
        self.scorer: NFScorer | None = None
        self.channels: list[int] = []
        self.w_used: float = float("nan")
        self.category: str | None = None
        self.fe_history: list[float] = []
        self._frozen: nn.Module | None = None

    # -- what a configuration needs ----------------------------------------------------
    @property
    def _needs_nf(self) -> bool:
        return self.config.score_map in ("joint", "nf")

    @property
    def _needs_cls(self) -> bool:
        return self.config.score_map in ("joint", "cls")

    @property
    def _nf_on_frozen(self) -> bool:
        return self.config.finetune == "none" or not self.config.shared_encoder

    def _frozen_encoder(self) -> nn.Module:
        if self._frozen is None:
            cfg = self.config
            self._frozen = build_encoder(cfg.backbone, LAYERS, cfg.padding, False, self.device)
        return self._frozen

    def _new_decoder(self, channels: list[int]) -> PixelDecoder:
        cfg = self.config
        cls = cfg.finetune == "cls"
        return PixelDecoder(channels, out_channels=1 if cls else 3, skips=cls,
                            blocks=tuple(cfg.decoder_blocks), width_scale=cfg.decoder_width_scale,
                            prior=cfg.decoder_prior if cls and cfg.decoder_prior > 0 else None)

    def _foreign(self):
        cfg = self.config
        if cfg.foreign_source == "procedural":
            return procedural_texture
        return DTDTextures(cfg.dtd_root or datasets_root() / "dtd")

    def _synthetic_settings(self) -> SyntheticSettings:
        cfg = self.config
        return SyntheticSettings(in_domain_prob=cfg.in_domain_prob, beta_max=cfg.beta_max,
                                 perlin_max_exponent=cfg.perlin_max_exponent,
                                 perlin_threshold=cfg.perlin_threshold, soft_label=cfg.soft_label,
                                 label_gain=cfg.label_gain)

    def _synthesizer(self, images: torch.Tensor) -> DefectSynthesizer:
        array = images.permute(0, 2, 3, 1).numpy().astype(np.float32)
        return DefectSynthesizer.for_images(array, self.category, self.config.object_mask,
                                            self._foreign(), self._synthetic_settings())

    # -- stage 1: fine-tuning the feature extractor ------------------------------------
    def _fe_key(self, train: ImageSet, seed: int) -> str:
        cfg = self.config
        fe_fields = {k: v for k, v in dataclasses.asdict(cfg).items()
                     if k.startswith(("fe_", "decoder_")) or k in (
                         "backbone", "input_size", "padding", "finetune", "object_mask",
                         "foreign_source", "in_domain_prob", "beta_max", "perlin_max_exponent",
                         "perlin_threshold", "soft_label", "label_gain", "regen_every")}
        if cfg.foreign_source == "dtd":
            fe_fields["dtd_root"] = str(cfg.dtd_root or datasets_root() / "dtd")
        here = Path(__file__).parent
        return StageCache.key({
            "stage": "fe", "fields": fe_fields, "weights": get_backbone_spec(cfg.backbone).weights_tag,
            "object_mask_rule": object_mask_rule(self.category, cfg.object_mask),
            "code": code_digest(here / "model.py", *SYNTHETIC_SOURCES, here / "decoder.py"),
            "train": train.fingerprint, "seed": seed})

    def _fit_fe(self, train: ImageSet, images: torch.Tensor, seed: int, cache: StageCache) -> str:
        cfg = self.config
        key = self._fe_key(train, seed)
        encoder = build_encoder(cfg.backbone, LAYERS, cfg.padding, True, self.device)
        self.channels = encoder.channels()
        with torch.random.fork_rng(devices=[]):  # the decoder's initialisation comes from the seed
            torch.manual_seed(seed + 3000)
            decoder = self._new_decoder(self.channels).to(self.device)
        stored = cache.load("fe", key)
        if stored is not None:
            encoder.load_state_dict(stored["encoder"])
            decoder.load_state_dict(stored["decoder"])
            self.fe_history = [float(v) for v in stored["history"].tolist()]
        else:
            self.fe_history = self._train_fe(encoder, decoder, images, seed)
            cache.save("fe", key, {"encoder": {k: v.cpu() for k, v in encoder.state_dict().items()},
                                   "decoder": {k: v.cpu() for k, v in decoder.state_dict().items()},
                                   "history": torch.tensor(self.fe_history)})
        self.encoder = encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.decoder = decoder.eval() if cfg.finetune == "cls" else None
        return key

    def _train_fe(self, encoder: nn.Module, decoder: PixelDecoder, images: torch.Tensor,
                  seed: int) -> list[float]:
        """Alg. 1 step 1 (lines 1-18): returns the mean loss per meta-epoch."""
        cfg = self.config
        cls = cfg.finetune == "cls"
        synth = self._synthesizer(images) if cls else None
        n = images.shape[0]
        slots = n * cfg.fe_repeat
        total = cfg.fe_freeze_epochs + cfg.fe_meta_epochs
        optimizer = torch.optim.Adam([{"params": encoder.parameters()},
                                      {"params": decoder.parameters()}],
                                     lr=cfg.fe_lr, weight_decay=cfg.fe_weight_decay)
        order_rng = np.random.default_rng([seed, 1])
        history = []
        decoder.train()
        encoder.eval()  # BatchNorm keeps the ImageNet statistics (§IV-B)
        bar = tqdm(range(total), desc=f"clscnf FE ({cfg.finetune})", leave=False,
                   disable=not bars_enabled())
        for meta in bar:
            eta_min = cfg.fe_lr * cfg.fe_lr_min_factor
            lr = eta_min + (cfg.fe_lr - eta_min) * (1 + math.cos(math.pi * meta / max(total, 1))) / 2
            for group in optimizer.param_groups:
                group["lr"] = lr
            decoder_only = meta < cfg.fe_freeze_epochs  # e <= N_pD (Alg. 1 line 10)
            losses = []
            for sub in range(cfg.fe_sub_epochs):
                pass_index = meta * cfg.fe_sub_epochs + sub
                regen_round = pass_index // cfg.regen_every  # D_s redrawn every N_s passes
                order = order_rng.permutation(slots)
                for start in range(0, slots, cfg.fe_batch_size):
                    chosen = order[start:start + cfg.fe_batch_size]
                    index = chosen % n
                    if cls:
                        rngs = [np.random.default_rng([seed, 2, regen_round, int(s)]) for s in chosen]
                        x, target, _ = synth.batch(index, rngs)
                        x = _to_tensor(x).to(self.device)
                        target = torch.from_numpy(target)[:, None].to(self.device)
                    else:
                        x = images[torch.as_tensor(index)].to(self.device)
                    if decoder_only:
                        with torch.no_grad():
                            maps = encoder(x)
                    else:
                        maps = encoder(x)
                    out = decoder(maps)
                    if cls:  # Eq. 1 with C = 2 classes: binary cross-entropy on soft labels
                        loss = F.binary_cross_entropy_with_logits(out, target)
                    else:  # FE_REG: regress the normalised input, error summed over RGB
                        normalised = (x - encoder.mean) / encoder.std
                        if cfg.fe_reg_loss == "l1_sigmoid":  # original: sigmoid, normalise, L1
                            pred = (torch.sigmoid(out) - encoder.mean) / encoder.std
                            loss = (pred - normalised).abs().sum(dim=1).mean()
                        else:  # mse_linear: linear output, squared error
                            loss = (out - normalised).pow(2).sum(dim=1).mean()
                    losses.append(descent_step(
                        optimizer, loss, "CLS-CNFs FE",
                        lambda: f"meta-epoch {meta + 1}, pass {sub + 1}, "
                                f"step {start // cfg.fe_batch_size + 1}"))
            history.append(float(np.mean(losses)))
            bar.set_postfix(loss=f"{history[-1]:.4f}")
        decoder.eval()
        return history

    # -- Detector protocol ---------------------------------------------------------------
    def fit(self, train: ImageSet) -> "CLSCNFDetector":
        self.category = category_of(train)
        self.config = cfg = apply_category_settings(self.config, self.category)
        _check(cfg)
        seed = int(torch.initial_seed())
        cache = StageCache(cfg.reuse_stages)
        images = train.load_images()
        fe_key = None
        if cfg.finetune != "none":
            fe_key = self._fit_fe(train, images, seed, cache)
        if self._needs_nf:
            if self._nf_on_frozen:
                features, source = frozen_features(cfg.backbone, LAYERS, cfg.padding, train,
                                                   self.device)
            else:
                features = extract(self.encoder, images, self.device, desc="features (fine-tuned)")
                source = {"encoder": "fine-tuned", "fe_stage": fe_key}
            self.channels = [f.shape[1] for f in features]
            self.flows = fit_cnf_stage(features, source, cnf_settings(cfg), train, seed,
                                       self.device, cache, desc="clscnf CNF fit")
            self.fit_info_ = {"schedule": schedule_info(cnf_settings(cfg))}
            self.scorer = NFScorer(self.flows, cfg.condition_dim, self.device)
            self.scorer.calibrate(features, cfg.input_size)
        self.w_used = self._resolve_w(images, seed)
        self.config = dataclasses.replace(self.config, w_chosen=self.w_used)  # into the record
        return self

    def _resolve_w(self, images: torch.Tensor, seed: int) -> float:
        cfg = self.config
        w = parse_w(cfg.w)
        if cfg.score_map != "joint":
            return float("nan")
        if w == "original":
            return ORIGINAL_W.get(self.category or "", cfg.w_fallback)
        if w == "synthetic":
            return self.choose_w_synthetic(images, seed)[0]
        return float(w)

    def synthetic_validation_set(self, images: torch.Tensor, seed: int
                                 ) -> tuple[torch.Tensor, np.ndarray]:
        """Fresh synthetic defects on the training images (even indices defective, odd ones
        left normal, like the original's aug_set): images ``[N, 3, S, S]``, masks ``[N, S, S]``."""
        synth = self._synthesizer(images)
        out, masks = [], []
        for i in range(images.shape[0]):
            if i % 2 == 0:
                sample = synth.sample(i, np.random.default_rng([seed, 99, i]))
                out.append(sample.image)
                masks.append(sample.mask)
            else:
                out.append(synth.images[i])
                masks.append(np.zeros(images.shape[-2:], bool))
        return _to_tensor(np.stack(out)), np.stack(masks)

    def choose_w_synthetic(self, images: torch.Tensor, seed: int) -> tuple[float, dict]:
        """w with the best pixel AUPR of ``A_nf + w A_p`` on the synthetic validation set (no
        test label is used). Returns ``(w, {w: AUPR})``."""
        from nfbench.metrics import pixel_aupr

        x, masks = self.synthetic_validation_set(images, seed)
        if not masks.any():
            return self.config.w_fallback, {}
        maps = self._score_maps(x, final="train")
        table = {w: pixel_aupr(masks, (maps["nf"] + w * maps["cls"]).numpy())
                 for w in self.config.w_grid}
        best = max(table, key=lambda w: (table[w], -w))
        return float(best), table

    @torch.no_grad()
    def _score_maps(self, images: ImageSet | torch.Tensor, final: str) -> dict[str, torch.Tensor]:
        """``{"nf": A_nf, "cls": A_p}`` as needed, ``[N, S, S]`` float64 (CPU)."""
        cfg = self.config
        size = images.size if isinstance(images, ImageSet) else images.shape[-1]
        shared = not self._nf_on_frozen
        maps: dict[str, torch.Tensor] = {}
        nf_features = None
        if self._needs_cls or (self._needs_nf and shared):
            encoder, head = self.encoder, ProbabilityHead(self.decoder) if self._needs_cls else None
            feats, probs = [], []
            n = len(images)
            for start in range(0, n, 16):
                idx = range(start, min(start + 16, n))
                batch = images.load_images(idx) if isinstance(images, ImageSet) else images[start:idx.stop]
                enc = encoder(batch.to(self.device))
                if self._needs_nf and shared:
                    feats.append([m.float().cpu() for m in enc])
                if head is not None:
                    probs.append(head(enc)[:, 0].double().cpu())
            if feats:
                nf_features = [torch.cat(parts) for parts in zip(*feats)]
            if probs:
                maps["cls"] = torch.cat(probs)
        if self._needs_nf:
            if nf_features is None:
                if isinstance(images, ImageSet):
                    nf_features = frozen_features(cfg.backbone, LAYERS, cfg.padding, images,
                                                  self.device)[0]
                else:
                    nf_features = extract(self._frozen_encoder(), images, self.device)
            maps["nf"] = self.scorer.anomaly(nf_features, size, "train", final)
        return maps

    def score_maps(self, images: ImageSet) -> dict[str, torch.Tensor]:
        """Every map this configuration has, under its normalisation: ``nf`` (A_nf),
        ``cls`` (A_p) and, for ``score_map=joint``, ``joint`` (A = A_nf + w A_p)."""
        if (self._needs_nf and self.scorer is None) or (self._needs_cls and self.decoder is None):
            raise RuntimeError("CLSCNFDetector used before fit")
        final = "scored" if self.config.normalization == "transductive" else "train"
        maps = self._score_maps(images, final)
        if self.config.score_map == "joint":
            maps["joint"] = maps["nf"] + self.w_used * maps["cls"]  # Eq. 9
        return maps

    def score(self, images: ImageSet) -> Scores:
        """Under ``normalization="transductive"`` (the paper) ``n_max`` is taken over
        ``images``: pass the whole test set at once."""
        pixel = self.score_maps(images)[self.config.score_map]
        return Scores(image=pixel.flatten(1).max(dim=1).values.numpy(), pixel=pixel.float().numpy())

    def state_dict(self) -> dict:
        if ((self._needs_nf and self.flows is None)
                or (self.config.finetune != "none" and self.encoder is None)):
            raise RuntimeError("CLSCNFDetector has no state before fit")
        state: dict[str, Any] = {"channels": torch.tensor(self.channels),
                                 "w_used": torch.tensor(self.w_used, dtype=torch.float64)}
        if self.encoder is not None:
            state["encoder"] = self.encoder.state_dict()
        if self.decoder is not None:
            state["decoder"] = self.decoder.state_dict()
        if self.flows is not None:
            state["flows"] = self.flows.state_dict()
            state.update(self.scorer.state())
        return state

    def load_state_dict(self, state: dict) -> None:
        cfg = self.config
        self.channels = [int(c) for c in state["channels"].tolist()]
        self.w_used = float(state["w_used"])
        if "encoder" in state:
            self.encoder = build_encoder(cfg.backbone, LAYERS, cfg.padding, False, self.device)
            self.encoder.load_state_dict(state["encoder"])
        if "decoder" in state:
            self.decoder = self._new_decoder(self.channels).to(self.device)
            self.decoder.load_state_dict(state["decoder"])
            self.decoder.eval()
        if "flows" in state:
            self.flows = build_flows(self.channels, cnf_settings(cfg), seed=0,
                                     draw_permutations=False).to(self.device)
            self.flows.load_state_dict(state["flows"])
            self.flows.eval()
            self.scorer = NFScorer(self.flows, cfg.condition_dim, self.device)
            self.scorer.load(state)

    # -- profiling (Table 3) -----------------------------------------------------------
    def build_untrained(self, pretrained: bool = False) -> "CLSCNFDetector":
        """Every network of Table 3 at its initialisation (encoder weights only if
        ``pretrained``), without fitting: size, FLOPs and speed do not depend on the weights,
        and profiling the paper configuration must not need a dataset or a download."""
        cfg = self.config
        self._frozen = build_encoder(cfg.backbone, LAYERS, cfg.padding, False, self.device,
                                     pretrained)
        self.encoder = build_encoder(cfg.backbone, LAYERS, cfg.padding, False, self.device,
                                     pretrained)
        self.channels = self.encoder.channels()
        self.decoder = self._new_decoder(self.channels).to(self.device).eval()
        self.flows = build_flows(self.channels, cnf_settings(cfg), seed=0).to(self.device).eval()
        self.scorer = NFScorer(self.flows, cfg.condition_dim, self.device)
        self.scorer.train_maxima = [0.0] * len(self.channels)
        self.w_used = 1.0
        return self

    def components(self) -> dict[str, nn.Module]:
        """The networks of Table 3, for parameter sizes (MB of float parameters):
        ``FE``, ``CLS`` (FE + decoder), ``FE_CLS-CNFs`` (FE + CNFs), ``CLS-CNFs-sFE`` (FE +
        decoder + CNFs) and ``CLS-CNFs-nsFE`` (frozen FE + CNFs + a second FE + decoder). Needs
        a detector fitted with ``finetune=cls`` and a score map that trains the flows."""
        if self.encoder is None or self.decoder is None or self.flows is None:
            raise RuntimeError("components() needs a fitted finetune=cls, score_map=joint|nf detector")
        fe, dec, cnfs, frozen = self.encoder, self.decoder, self.flows, self._frozen_encoder()
        return {"FE": fe,
                "CLS": nn.ModuleDict({"fe": fe, "decoder": dec}),
                "FE_CLS-CNFs": nn.ModuleDict({"fe": fe, "cnfs": cnfs}),
                "CLS-CNFs-sFE": nn.ModuleDict({"fe": fe, "decoder": dec, "cnfs": cnfs}),
                "CLS-CNFs-nsFE": nn.ModuleDict({"fe_pre": frozen, "cnfs": cnfs, "fe": fe,
                                                "decoder": dec})}

    def inference_module(self, kind: str | None = None, pretrained: bool = True) -> nn.Module:
        """Images in [0, 1] -> image scores, for FLOPs and fps. ``kind``: one of the Table 3
        networks ``CLS``, ``FE_CLS-CNFs``, ``CLS-CNFs-sFE``, ``CLS-CNFs-nsFE``; default: this
        configuration. Uses the training-set maxima (the inductive form; the transductive
        one costs the same plus one max over the set). Before fit, the networks are built
        untrained (:meth:`build_untrained`, ``pretrained`` encoder weights or not)."""
        if self.flows is None and self.encoder is None:
            self.build_untrained(pretrained)
        cfg = self.config
        if kind is None:
            kind = {"cls": "CLS", "nf": "FE_CLS-CNFs", "joint": "CLS-CNFs-sFE"}[cfg.score_map]
            if cfg.score_map != "cls" and self._nf_on_frozen:
                kind = "CLS-CNFs-nsFE" if cfg.score_map == "joint" else "FE_PRE-CNFs"
        w = self.w_used if math.isfinite(self.w_used) else 1.0
        if kind == "CLS":
            if self.encoder is None or self.decoder is None:
                raise RuntimeError("CLS inference needs a fitted classification network")
            return _ClassifierInference(self.encoder, ProbabilityHead(self.decoder))
        if self.flows is None or self.scorer is None:
            raise RuntimeError("CLSCNFDetector used before fit")
        size = cfg.input_size
        nf_encoder = self._frozen_encoder() if self._nf_on_frozen else self.encoder
        if kind in ("FE_CLS-CNFs", "FE_PRE-CNFs"):
            return NFInference(nf_encoder, self.flows, self.scorer, cfg.condition_dim, size)
        if self.encoder is None or self.decoder is None:
            raise RuntimeError(f"{kind} inference needs a fitted classification network")
        head = ProbabilityHead(self.decoder)
        if kind == "CLS-CNFs-sFE":
            return NFInference(self.encoder, self.flows, self.scorer, cfg.condition_dim, size,
                               classifier=head, w=w)
        if kind == "CLS-CNFs-nsFE":
            return NFInference(self._frozen_encoder(), self.flows, self.scorer, cfg.condition_dim,
                               size, classifier=head, w=w, classifier_encoder=self.encoder)
        raise UserError(f"unknown inference kind {kind!r}")


class _ClassifierInference(nn.Module):
    """encoder -> decoder -> A_p -> max."""

    def __init__(self, encoder: nn.Module, head: ProbabilityHead):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images)).flatten(1).max(dim=1).values
