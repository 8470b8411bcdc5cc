"""CLS-CNFs' first stage (Alg. 1 step 1): fine-tuning the feature extractor.

``finetune="cls"`` (FE_CLS): the ImageNet encoder (WideResNet-50-2; offline: EfficientNet-Lite0)
and the shallow decoder (:mod:`.decoder`) learn to segment synthetic defects
(:mod:`nfbench.methods.synthetic`) with the soft-label cross-entropy (Eq. 1): decoder only for ``fe_freeze_epochs`` (N_pD), then
encoder and decoder for ``fe_meta_epochs``. The encoder stays in eval mode, so its BatchNorm
statistics remain ImageNet's (§IV-B). Synthetic defects are redrawn every ``regen_every``
passes (N_s; the original code redraws every sample on every access, i.e. ``regen_every=1``).
``finetune="reg"`` is the FE_REG ablation: a reconstruction network without skip connections
regresses the normal training images. A trained stage is kept in the stage cache.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nfbench.backbones import get_backbone_spec
from nfbench.datasets.base import ImageSet
from nfbench.methods.base import EpochLosses, adam
from nfbench.methods.clscnf.config import CLSCNFConfig
from nfbench.methods.clscnf.decoder import PixelDecoder
from nfbench.methods.clscnf.defect_batches import default_workers, defect_batches
from nfbench.methods.synthetic import (DefectSynthesizer, DTDTextures, SyntheticSettings,
                                      object_mask_rule, procedural_texture)
from nfbench.methods.cnf.encoder import LAYERS, build_encoder
from nfbench.methods.cnf.stage import StageCache, stage_code
from nfbench.paths import datasets_root
from nfbench.progress import bars_enabled


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``[N, H, W, 3]`` float arrays -> ``[N, 3, H, W]`` float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()


def new_decoder(cfg: CLSCNFConfig, channels: list[int]) -> PixelDecoder:
    """The classification decoder (``finetune="cls"``) or FE_REG's reconstruction decoder."""
    cls = cfg.finetune == "cls"
    return PixelDecoder(channels, out_channels=1 if cls else 3, skips=cls,
                        blocks=tuple(cfg.decoder_blocks), width_scale=cfg.decoder_width_scale,
                        prior=cfg.decoder_prior if cls and cfg.decoder_prior > 0 else None)


def _foreign(cfg: CLSCNFConfig):
    if cfg.foreign_source == "procedural":
        return procedural_texture
    return DTDTextures(cfg.dtd_root or datasets_root() / "dtd")


def synthesizer(cfg: CLSCNFConfig, category: str | None, images: torch.Tensor
                ) -> DefectSynthesizer:
    """The synthetic-defect maker of ``cfg`` on ``images`` ``[N, 3, S, S]`` of ``category``."""
    array = images.permute(0, 2, 3, 1).numpy().astype(np.float32)
    settings = SyntheticSettings(in_domain_prob=cfg.in_domain_prob, beta_max=cfg.beta_max,
                                 perlin_max_exponent=cfg.perlin_max_exponent,
                                 perlin_threshold=cfg.perlin_threshold, soft_label=cfg.soft_label,
                                 label_gain=cfg.label_gain)
    return DefectSynthesizer.for_images(array, category, cfg.object_mask, _foreign(cfg), settings)


#: The settings the FE stage depends on besides the fe_* and decoder_* fields.
FE_FIELDS = ("backbone", "input_size", "padding", "finetune", "object_mask", "foreign_source",
             "in_domain_prob", "beta_max", "perlin_max_exponent", "perlin_threshold",
             "soft_label", "label_gain", "regen_every")


def fe_stage_key(cfg: CLSCNFConfig, category: str | None, train: ImageSet, seed: int) -> str:
    """The stage-cache key of the FE stage: its settings, weights, code, images and seed."""
    fe_fields = {k: v for k, v in dataclasses.asdict(cfg).items()
                 if k.startswith(("fe_", "decoder_")) or k in FE_FIELDS}
    if cfg.foreign_source == "dtd":
        fe_fields["dtd_root"] = str(cfg.dtd_root or datasets_root() / "dtd")
    return StageCache.key({
        "stage": "fe", "fields": fe_fields, "weights": get_backbone_spec(cfg.backbone).weights_tag,
        "object_mask_rule": object_mask_rule(category, cfg.object_mask),
        "code": stage_code(__name__),
        "train": train.fingerprint, "seed": seed})


@dataclass
class FEStage:
    """A fine-tuned feature extractor: the encoder (frozen from now on), the classification
    decoder (None for FE_REG), the encoder's channels, the loss per meta-epoch, the cache key."""

    encoder: nn.Module
    decoder: PixelDecoder | None
    channels: list[int]
    history: list[float]
    key: str


def fit_fe(cfg: CLSCNFConfig, category: str | None, train: ImageSet, images: torch.Tensor,
           seed: int, cache: StageCache, device: torch.device) -> FEStage:
    """Fine-tune (or reuse from the cache) the encoder of ``cfg`` on ``images``."""
    key = fe_stage_key(cfg, category, train, seed)
    encoder = build_encoder(cfg.backbone, LAYERS, cfg.padding, True, device)
    channels = encoder.channels()
    with torch.random.fork_rng(devices=[]):  # the decoder's initialisation comes from the seed
        torch.manual_seed(seed + 3000)
        decoder = new_decoder(cfg, channels).to(device)
    with cache.claim("fe", key):  # one process trains it, the others wait and load it
        stored = cache.load("fe", key)
        if stored is not None:
            encoder.load_state_dict(stored["encoder"])
            decoder.load_state_dict(stored["decoder"])
            history = [float(v) for v in stored["history"].tolist()]
        else:
            history = train_fe(cfg, category, encoder, decoder, images, seed, device)
            cache.save("fe", key, {
                "encoder": {k: v.cpu() for k, v in encoder.state_dict().items()},
                "decoder": {k: v.cpu() for k, v in decoder.state_dict().items()},
                "history": torch.tensor(history)})
    encoder = encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return FEStage(encoder, decoder.eval() if cfg.finetune == "cls" else None, channels,
                   history, key)


def train_fe(cfg: CLSCNFConfig, category: str | None, encoder: nn.Module,
             decoder: PixelDecoder, images: torch.Tensor, seed: int,
             device: torch.device) -> list[float]:
    """Alg. 1 step 1 (lines 1-18): returns the mean loss per meta-epoch."""
    cls = cfg.finetune == "cls"
    synth = synthesizer(cfg, category, images) if cls else None
    n = images.shape[0]
    slots = n * cfg.fe_repeat
    total = cfg.fe_freeze_epochs + cfg.fe_meta_epochs
    optimizer = adam([{"params": encoder.parameters()}, {"params": decoder.parameters()}],
                     device, lr=cfg.fe_lr, weight_decay=cfg.fe_weight_decay)
    order_rng = np.random.default_rng([seed, 1])
    # every pass's slot order up front (the same stream: nothing else draws from order_rng),
    # so the defects of every step can be made ahead by workers (defect_batches)
    orders = [order_rng.permutation(slots) for _ in range(total * cfg.fe_sub_epochs)]
    if cls:
        plan = [(p // cfg.regen_every, order[start:start + cfg.fe_batch_size])
                for p, order in enumerate(orders) for start in range(0, slots, cfg.fe_batch_size)]
        defects = defect_batches(synth, n, seed, plan, default_workers(device))
    history = []
    losses = EpochLosses("CLS-CNFs FE")
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
        for sub in range(cfg.fe_sub_epochs):
            order = orders[meta * cfg.fe_sub_epochs + sub]
            for start in range(0, slots, cfg.fe_batch_size):
                chosen = order[start:start + cfg.fe_batch_size]
                index = chosen % n
                if cls:  # D_s redrawn every N_s passes (regen_every), made ahead
                    x, target = next(defects)
                    x = to_tensor(x).to(device)
                    target = torch.from_numpy(target)[:, None].to(device)
                else:
                    x = images[torch.as_tensor(index)].to(device)
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
                losses.step(optimizer, loss, f"meta-epoch {meta + 1}, pass {sub + 1}, "
                                             f"step {start // cfg.fe_batch_size + 1}")
        history.append(losses.end_epoch())
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    decoder.eval()
    return history
