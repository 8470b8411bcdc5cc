"""Synthetic defects of CLS-CNFs (Oh & Kim 2024, §III-A, Fig. 1), deterministic from a numpy
``Generator``.

A defect is made in five steps:

1. a *pattern mask* ``M_p``: Perlin noise with lattice resolution ``2^a x 2^b``
   (``a, b ~ U{0..5}``), rotated by ``U(-90, 90)`` degrees, thresholded at 0.5 (DRAEM's recipe,
   which AD-CLSCNFs' ``synthetic_data_loader.py`` reuses);
2. an *object mask* ``M_o`` from the grayscale normal image: 3x3 Gaussian blur, Otsu threshold,
   the dark side (or the bright side for categories whose object is brighter than the
   background), 3x3 opening and closing, Gaussian blur sigma 2, ``2m - 1`` clipped, holes
   filled (:data:`OBJECT_MASK_RULES` holds the original per-category exceptions);
3. the *defect mask* ``M_d = [M_p * M_o > 0]``;
4. a *source* image: with probability ``in_domain_prob`` another normal image of the same
   category (subtle defects, Fig. 1b), else a foreign texture (apparent defects, Fig. 1a: DTD
   in the paper, procedural textures offline), each passed through 3 of 9 random photometric
   augmentations; it is blended in with ``beta ~ U(0, 0.8)``:
   ``x_s = x (1 - M_d) + M_d ((1 - beta) src + beta x)``;
5. a *soft label* from the colour difference ``d = mean_c(x_s - x)``: ``sigmoid(5 d)`` per pixel
   of ``M_d`` (the paper's text, ``soft_label="pixel"``) or one value per image, the mean of
   ``sigmoid(5 d)`` over the defect pixels with ``d != 0`` (the original code,
   ``soft_label="image"``). The difference is signed, as in both: a defect darker than the
   image gets a label below 0.5. Outside ``M_d`` the label is 0; an image whose ``M_d`` is
   empty (no Perlin blob, or all of it in the background) is a normal sample.

Images are ``float32 [H, W, 3]`` in [0, 1] throughout. The pieces live in their own modules:
the Perlin mask in :mod:`.perlin`, ``M_o`` in :mod:`.foreground`, the augmenters in
:mod:`.augment` (:data:`~.augment.CLSCNF_AUGMENTERS`), foreign sources in :mod:`.textures`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from nfbench.errors import UserError
from nfbench.methods.synthetic.augment import augment_source
from nfbench.methods.synthetic.foreground import object_mask, object_mask_rule
from nfbench.methods.synthetic.perlin import pattern_mask
from nfbench.methods.synthetic.textures import procedural_texture


@dataclass(frozen=True)
class SyntheticSettings:
    """How defects are drawn (defaults: AD-CLSCNFs ``synthetic_data_loader.py`` / config.py)."""

    in_domain_prob: float = 0.5  # use_in_domain_data: 50 % in-domain source, 50 % DTD
    beta_max: float = 0.8  # beta ~ U(0, 0.8)
    perlin_max_exponent: int = 6  # lattice 2^randint(0, 6) per axis
    perlin_threshold: float = 0.5
    n_augment: int = 3  # 3 of the 9 augmenters
    soft_label: str = "image"  # "image" (code) | "pixel" (paper text)
    label_gain: float = 5.0  # sigmoid(5 * d)


@dataclass
class Sample:
    """A synthetic sample: ``image [H, W, 3]``, soft ``label [H, W]`` in [0, 1] and the binary
    defect mask ``mask [H, W]`` (``label > 0`` exactly on ``mask``)."""

    image: np.ndarray
    label: np.ndarray
    mask: np.ndarray


def soft_label(normal: np.ndarray, defective: np.ndarray, mask: np.ndarray, mode: str,
               gain: float = 5.0) -> np.ndarray:
    """Soft label of a defect (see module doc); 0 outside ``mask``."""
    diff = (defective - normal).mean(axis=-1)
    prob = 1.0 / (1.0 + np.exp(-gain * diff))
    label = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return label
    if mode == "pixel":
        label[mask] = prob[mask]
    elif mode == "image":
        changed = mask & (diff != 0)
        label[mask] = prob[changed].mean() if changed.any() else 0.5
    else:
        raise UserError(f"soft_label must be 'image' or 'pixel', got {mode!r}")
    return label


class DefectSynthesizer:
    """Draws synthetic defects on the normal images of one category.

    ``images``: ``float32 [N, H, W, 3]`` in [0, 1]; ``object_masks``: ``[N, H, W]`` (see
    :func:`object_mask`); ``foreign``: ``callable(size, rng) -> [size, size, 3]`` (a
    :class:`DTDTextures` or :func:`procedural_texture`).
    """

    def __init__(self, images: np.ndarray, object_masks: np.ndarray,
                 foreign: Callable[[int, np.random.Generator], np.ndarray],
                 settings: SyntheticSettings = SyntheticSettings()):
        self.images, self.object_masks = images, object_masks
        self.foreign, self.settings = foreign, settings

    @classmethod
    def for_images(cls, images: np.ndarray, category: str | None, mode: str = "auto",
                   foreign: Callable | None = None,
                   settings: SyntheticSettings = SyntheticSettings()) -> "DefectSynthesizer":
        rule, fill = object_mask_rule(category, mode)
        masks = np.stack([object_mask(img, rule, fill) for img in images])
        return cls(images, masks, foreign or procedural_texture, settings)

    def source(self, index: int, rng: np.random.Generator) -> np.ndarray:
        n, size = len(self.images), self.images.shape[1]
        if n > 1 and rng.random() < self.settings.in_domain_prob:
            other = int(rng.integers(n - 1))
            src = self.images[other + (other >= index)]  # another normal image of the category
        else:
            src = self.foreign(size, rng)
        return augment_source(src, rng, self.settings.n_augment)

    def sample(self, index: int, rng: np.random.Generator) -> Sample:
        """A defect on normal image ``index`` (or the image itself when ``M_d`` is empty)."""
        s = self.settings
        image = self.images[index]
        shape = image.shape[:2]
        m_p = pattern_mask(shape, rng, s.perlin_max_exponent, s.perlin_threshold)
        source = self.source(index, rng)
        beta = float(rng.uniform(0.0, s.beta_max))
        m_d = m_p & (self.object_masks[index] > 0)
        if not m_d.any():
            return Sample(image.copy(), np.zeros(shape, np.float32), m_d)
        m = m_d[..., None]
        defective = np.where(m, (1 - beta) * source + beta * image, image).astype(np.float32)
        return Sample(defective, soft_label(image, defective, m_d, s.soft_label, s.label_gain), m_d)

    def batch(self, indices: Sequence[int], rngs: Sequence[np.random.Generator]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images ``[B, H, W, 3]``, labels ``[B, H, W]`` and masks ``[B, H, W]``."""
        samples = [self.sample(int(i), r) for i, r in zip(indices, rngs)]
        return (np.stack([s.image for s in samples]), np.stack([s.label for s in samples]),
                np.stack([s.mask for s in samples]))
