"""FLOPs of a profile's work, counted from the code's own networks (``nfbench plan``).

Per image, the forward FLOPs of each method's ``inference_module`` (the network ``score()``
runs) are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add,
matmuls and convolutions; element-wise ops are left out, a few per cent), split into the
frozen feature extractor (:data:`EXTRACTOR_NAMES`) and the rest (what trains:
the flows, heads). fvcore counts the same layers (:mod:`nfbench.profiling`) but traces the
model with the JIT, which takes minutes at paper size on a CPU; FlopCounterMode runs on fake
tensors (:func:`nfbench.profiling.torch_flop_counter`: shapes only). Counting runs at a probe size (``PROBE`` px, or the input size when smaller) and
is scaled by the area ratio (convolutions and per-pixel flows scale with the pixel count),
and each count is cached under ``<cache>/profiling`` keyed by its settings and the method's
code digest (:func:`nfbench.pipeline.complexity.cached`), so only the first plan of a
profile counts.

A run's work (:func:`run_items`) is a list of items, each with a key: work with the same key
is done once however many runs need it (the cached features of one (dataset, category,
backbone, size), trained stages that runs share). Each method lists its own features and
training through its ``work_items`` hook (:func:`nfbench.methods.base.work_items`, filling a
:class:`RunWork`); the kinds:

* ``features``: extractor forward over the training and test images (features are cached);
* ``train``: forward + backward (backward ~ 2x forward, so 3x) of what trains, per training
  image and pass (e.g. epochs);
* ``score``: forward of what trained over the test images (added here for every run).
"""

from __future__ import annotations

import json
from typing import Any

#: Settings that change no network's shape: left out of a count's cache key, so that the
#: variants that only train longer or differently share one count.
SCHEDULE_FIELDS = frozenset({
    "epochs", "meta_epochs", "sub_epochs", "warm_epochs", "schedule_meta_epochs", "lr",
    "lr_min_factor", "weight_decay", "adam_eps", "adam_betas", "grad_clip", "batch_size",
    "fiber_batch", "fiber_fraction", "device", "deterministic", "precision", "reuse_stages",
    "category_settings", "normalization", "log_jac_reduction", "validation",
    "validation_fraction", "fe_batch_size", "fe_freeze_epochs", "fe_meta_epochs",
    "fe_sub_epochs", "fe_repeat", "fe_lr", "fe_lr_min_factor", "fe_weight_decay", "w",
    "w_fallback", "w_grid", "dtd_root", "regen_every", "in_domain_prob", "beta_max",
    "perlin_max_exponent", "perlin_threshold", "soft_label", "label_gain", "foreign_source",
    "object_mask", "blur_sigma", "covariance_eps"})

#: Largest side the networks are counted at; larger inputs are scaled by the area ratio.
PROBE = 256
#: The frozen feature extractors of the inference networks (CLS-CNFs-nsFE: ``nf_encoder``,
#: the frozen ImageNet encoder its flows read).
EXTRACTOR_NAMES = ("extractor", "encoder", "nf_encoder")


def _probe_settings(method: str, shape: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """The settings counted at the probe size and the area factor back to the input size."""
    size = int(shape.get("input_size") or 0)
    probe = min(size, PROBE) if size else 0
    settings = dict(shape)
    if not probe or probe == size:
        return settings, 1.0
    settings["input_size"] = probe
    if shape.get("crop_size"):  # PatchFlow's centre crop, in pixels: same share of the image
        settings["crop_size"] = max(8, int(round(shape["crop_size"] * probe / size / 8)) * 8)
    return settings, (size / probe) ** 2


def _count(method: str, settings: dict[str, Any]) -> dict[str, float]:
    """Forward GFLOPs per image of ``method``'s inference network: extractor and the rest."""
    import torch

    from nfbench.methods import create_method
    from nfbench.profiling import torch_flop_counter

    detector = create_method(method, **{**settings, "device": "cpu"})
    module = detector.inference_module(pretrained=False).eval()
    size = detector.config.input_size
    counts = torch_flop_counter(module, (torch.zeros(1, 3, size, size),)).get_flop_counts()
    total = sum(counts.get("Global", {}).values())
    top = type(module).__name__
    extractor = sum(sum(counts.get(f"{top}.{name}", {}).values()) for name in EXTRACTOR_NAMES)
    return {"extractor": extractor / 1e9, "trained": (total - extractor) / 1e9}


def forward_gflops(method: str, config: dict[str, Any]) -> dict[str, float]:
    """Forward GFLOPs per image (``extractor``, ``trained``) of ``method`` with the resolved
    ``config``, counted at the probe size, scaled, cached."""
    from nfbench.pipeline.complexity import cached

    shape = {k: v for k, v in config.items() if k not in SCHEDULE_FIELDS}
    settings, factor = _probe_settings(method, shape)
    counted = cached("forward_gflops", method, {"settings": settings},
                     lambda: _count(method, settings))
    return {k: v * factor for k, v in counted.items()}


def _key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=str)


def _category_config(config: dict[str, Any], category: str) -> dict[str, Any]:
    """``config`` with the category's own settings applied (params.yaml ``category_settings``,
    e.g. BTAD's shorter CNF schedule)."""
    overrides = (config.get("category_settings") or {}).get(str(category), {})
    return {**config, **overrides}


class RunWork:
    """The work items of one run, filled by the method's ``work_items(config, work)`` hook
    (declared by the method; without one, the run extracts features and scores only).

    ``extractor`` and ``trained`` are the forward FLOPs per image of the frozen extractor
    and of what trains; ``feature_source`` keys the features the run reads (by default the
    image features of its extractor, :meth:`feature_key`); :meth:`add_features` adds their
    extraction, :meth:`add` any other item. Work with the same key is done once however many
    runs need it."""

    def __init__(self, method: str, config: dict[str, Any], data: tuple, n_train: int,
                 n_test: int, seed: int, forward: dict[str, float]):
        self.method, self.config, self.data, self.seed = method, config, data, seed
        self.n_train, self.n_test = n_train, n_test
        self.extractor, self.trained = forward["extractor"] * 1e9, forward["trained"] * 1e9
        self.feature_source = self.feature_key("image")
        self.items: list[tuple[str, str, float]] = []

    @staticmethod
    def key(*parts: Any) -> str:
        return _key(*parts)

    def feature_key(self, family: str) -> str:
        """The key of features of ``family`` from the config's extractor, size and maps."""
        c = self.config
        return _key(family, c.get("backbone"), c.get("input_size"), c.get("padding"),
                    c.get("layer"), c.get("layers"), c.get("n_scales"), c.get("crop_size"))

    def add(self, kind: str, key: str, flops: float) -> None:
        self.items.append((kind, key, flops))

    def add_features(self) -> None:
        """Extractor forward over the training and test images (features are cached)."""
        self.add("features", _key("features", self.feature_source, self.data),
                 (self.n_train + self.n_test) * self.extractor)


def run_items(method: str, config: dict[str, Any], data: tuple, n_train: int, n_test: int,
              seed: int, forward: dict[str, float] | None = None) -> list[tuple[str, str, float]]:
    """The work of one run as ``(kind, key, flops)`` items (see the module docstring);
    ``data`` identifies the training data (dataset, root, category or joint categories,
    shots), ``forward`` the per-image GFLOPs (:func:`forward_gflops` when None). The method's
    own items (features, training) come from its ``work_items`` hook
    (:func:`nfbench.methods.base.work_items`); scoring is the forward of what trained."""
    from nfbench.methods import method_class
    from nfbench.methods.base import work_items

    forward = forward or forward_gflops(method, config)
    work = RunWork(method, config, data, n_train, n_test, seed, forward)
    work_items(method_class(method), config, work)
    work.add("score", _key("score", method, data, seed, config), work.trained * n_test)
    return work.items
