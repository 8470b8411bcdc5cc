"""``w`` of CLS-CNFs' joint map ``A = A_nf + w A_p`` (Eq. 9): a number, the per-category
values of the original run scripts (:data:`~.config.ORIGINAL_W`, test-tuned; ``w_fallback``
elsewhere), or the grid value with the best pixel AUPR on a synthetic validation set made
from the training images only (``w="synthetic"``: no test label is used)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from nfbench.methods.clscnf.config import ORIGINAL_W, CLSCNFConfig, parse_w
from nfbench.methods.clscnf.finetune import synthesizer, to_tensor

#: ``score_maps(images, final)``: ``{"nf": A_nf, "cls": A_p}`` of a fitted detector.
ScoreMaps = Callable[[torch.Tensor, str], dict[str, torch.Tensor]]


def synthetic_validation_set(cfg: CLSCNFConfig, category: str | None, images: torch.Tensor,
                             seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Fresh synthetic defects on the training images (even indices defective, odd ones
    left normal, like the original's aug_set): images ``[N, 3, S, S]``, masks ``[N, S, S]``."""
    synth = synthesizer(cfg, category, images)
    out, masks = [], []
    for i in range(images.shape[0]):
        if i % 2 == 0:
            sample = synth.sample(i, np.random.default_rng([seed, 99, i]))
            out.append(sample.image)
            masks.append(sample.mask)
        else:
            out.append(synth.images[i])
            masks.append(np.zeros(images.shape[-2:], bool))
    return to_tensor(np.stack(out)), np.stack(masks)


def choose_w_synthetic(cfg: CLSCNFConfig, category: str | None, images: torch.Tensor,
                       seed: int, score_maps: ScoreMaps) -> tuple[float, dict]:
    """w with the best pixel AUPR of ``A_nf + w A_p`` on the synthetic validation set (no
    test label is used). Returns ``(w, {w: AUPR})``."""
    from nfbench.metrics import pixel_aupr

    x, masks = synthetic_validation_set(cfg, category, images, seed)
    if not masks.any():
        return cfg.w_fallback, {}
    maps = score_maps(x, "train")
    table = {w: pixel_aupr(masks, (maps["nf"] + w * maps["cls"]).numpy()) for w in cfg.w_grid}
    best = max(table, key=lambda w: (table[w], -w))
    return float(best), table


def resolve_w(cfg: CLSCNFConfig, category: str | None, images: torch.Tensor, seed: int,
              score_maps: ScoreMaps) -> float:
    """The w a fitted detector uses (NaN unless ``score_map="joint"``)."""
    w = parse_w(cfg.w)
    if cfg.score_map != "joint":
        return float("nan")
    if w == "original":
        return ORIGINAL_W.get(category or "", cfg.w_fallback)
    if w == "synthetic":
        return choose_w_synthetic(cfg, category, images, seed, score_maps)[0]
    return float(w)
