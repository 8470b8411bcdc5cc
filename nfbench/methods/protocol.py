"""The original evaluation protocol a method declares: ``Detector.original_protocol``.

The suite reports the last epoch, scored without test labels. Most original codes chose what
they printed on the test set (docs/original-code.md §1a-§1d, §4 "Test-set model selection").
A method states what its original did by a subclass of :class:`OriginalProtocol` set as its
detector's ``original_protocol`` class attribute (``None``: nothing to measure). The
pipeline's recorder (:mod:`nfbench.pipeline.protocols`) drives it without knowing the method:

1. ``fit(train, evaluate=recorder)`` when :attr:`~OriginalProtocol.evaluates_during_fit`:
   the method calls ``evaluate(label)`` at the original's evaluation points (scaled to the
   run's budget, :func:`nfbench.methods.base.evaluation_epochs`), and the recorder asks
   :meth:`~OriginalProtocol.point` for the point's entry, under a forked RNG and
   ``torch.no_grad`` (the run's honest numbers are the same with or without it);
2. after the honest evaluation, :meth:`~OriginalProtocol.final_points` completes the points
   (e.g. scores the weights the original would have selected), :meth:`~OriginalProtocol.reported`
   says what the original would have printed, and :meth:`~OriginalProtocol.by_protocol`
   what other papers' protocols make of the same run.

The recorder adds what every protocol shares: the timing, the test-selected point (best image
AUROC over the tested points), the normalisation block and the record section's layout.
:class:`SelectThenTest` is the shared form of protocols that select on one value per point and
test only the selected weights (CS-Flow, PatchFlow). Nothing here trains.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from nfbench import metrics


def finite(value: float) -> float:
    """``value``, or ``-inf`` where it is not finite (so that NaN never wins a maximum)."""
    return value if math.isfinite(value) else -math.inf


def mean_metrics(per_test: dict[str, dict[str, float]]) -> dict[str, float]:
    """Metrics averaged over test sets (categories of a joint run), NaN where none is finite."""
    first = next(iter(per_test.values()))
    return {k: float(np.nanmean([m[k] for m in per_test.values()])) if any(
        math.isfinite(m[k]) for m in per_test.values()) else float("nan") for k in first}


class OriginalProtocol:
    """One run's measurement of a method's original evaluation protocol.

    ``tests`` maps category to test set (several for joint training: metrics are averaged
    over categories like the record's); ``train`` is the run's training set and ``seed`` its
    seed. Subclasses set the class attributes and override the hooks they need; the default
    hooks score the test sets at every evaluation point and report the point with the best
    image AUROC."""

    #: the record's ``original_protocol.protocol`` and the spec's ``protocol:`` name
    name: ClassVar[str]
    #: one line for reports: what the original did and what is measured here
    description: ClassVar[str]
    #: what the original reported, in a few words (companion tables)
    reported_as: ClassVar[str]
    #: whether ``fit`` receives the ``evaluate`` callback (False: only the final model counts)
    evaluates_during_fit: ClassVar[bool] = True
    #: the normalisation block describes the last point (True) or the test-selected one
    normalization_at_last: ClassVar[bool] = False

    def __init__(self, detector: Any, train: Any, tests: dict[str, Any], seed: int):
        self.detector, self.train, self.tests, self.seed = detector, train, tests, seed
        self._truth: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # -- helpers for the hooks -------------------------------------------------------------
    def truth(self, name: str, test: Any) -> tuple[np.ndarray, np.ndarray]:
        """(image labels, masks) of test set ``name``, loaded once."""
        if name not in self._truth:
            self._truth[name] = (np.asarray(test.labels), test.load_masks())
        return self._truth[name]

    def metrics(self, name: str, test: Any, image: np.ndarray, pixel: np.ndarray) -> dict:
        """Every metric (:func:`nfbench.metrics.compute_all`) of scores of test set ``name``."""
        labels, masks = self.truth(name, test)
        return metrics.compute_all(labels, image, masks, pixel)

    def evaluate_now(self) -> dict[str, Any]:
        """``{"metrics": ...}`` of the model as it is now, averaged over the test sets."""
        per_test = {}
        for name, test in self.tests.items():
            scores = self.detector.score(test)
            per_test[name] = self.metrics(name, test, scores.image, scores.pixel)
        return {"metrics": mean_metrics(per_test)}

    # -- hooks -----------------------------------------------------------------------------
    def point(self, label: str) -> dict[str, Any]:
        """The entry of evaluation point ``label`` (``metrics: None`` means "the run's honest
        metrics", filled in by the recorder)."""
        return {"label": label, **self.evaluate_now()}

    def final_points(self, points: list[dict], honest: dict[str, float]
                     ) -> tuple[list[dict], dict[str, Any]]:
        """The points as recorded, after the honest evaluation, and the fields the record
        section lists before them (e.g. CLS-CNFs' ``w``)."""
        return points, {}

    def reported(self, points: list[dict], best: int) -> tuple[dict[str, float], str]:
        """(what the original would have printed, per metric; how it was chosen); ``best`` is
        the index of the test-selected point."""
        return points[best]["metrics"], f"{points[best]['label']} (best test image AUROC)"

    def by_protocol(self, points: list[dict], reported: dict[str, float]
                    ) -> dict[str, dict[str, float]] | None:
        """What other protocols report for this run, by protocol name (a paper that scored
        this method its own way names that protocol in its spec); ``None``: none."""
        return None


class SelectThenTest(OriginalProtocol):
    """A protocol that selects on one value per evaluation point (:meth:`select_value`) and
    tests only the selected weights with every metric. The weights of the first strictly best
    point are kept and scored once, at the end; a point whose model is the run's final one
    (:meth:`final_is_honest`) takes the run's own metrics."""

    #: the key of the selection value in each point
    select_on: ClassVar[str]
    #: what the selection was, for ``reported_as``
    selected_what: ClassVar[str]

    def __init__(self, detector: Any, train: Any, tests: dict[str, Any], seed: int):
        super().__init__(detector, train, tests, seed)
        self._best_value = -math.inf
        self._best_label: str | None = None
        self._best_state: dict[str, torch.Tensor] | None = None

    def module(self) -> torch.nn.Module:
        """The module whose weights the selection keeps and restores."""
        raise NotImplementedError

    def final_is_honest(self, label: str) -> bool:
        """Whether point ``label`` ("... k/n") is the last epoch and the fitted model is that
        epoch's, so that its metrics are the run's honest ones (computed once, by the run)."""
        done, _, total = label.rpartition(" ")[2].partition("/")
        return done == total

    def select_value(self, label: str, final: bool) -> float | None:
        """The value the original selected on, now; ``None``: the run's own value of
        :attr:`select_on` (filled in at the end; only where ``final``)."""
        raise NotImplementedError

    def point(self, label: str) -> dict[str, Any]:
        final = self.final_is_honest(label)
        key = self.select_on
        value = self.select_value(label, final)
        if value is None:
            return {"label": label, key: None, "metrics": None}
        if finite(value) > self._best_value:
            self._best_value, self._best_label = finite(value), label
            self._best_state = None if final else \
                {k: v.detach().clone() for k, v in self.module().state_dict().items()}
        return {"label": label, key: value, "metrics": None if final else "pending"}

    def _selected_metrics(self) -> dict[str, float] | None:
        """Every metric of the kept weights (``None``: the final, honest model's)."""
        state = self._best_state
        if state is None:
            return None
        module = self.module()
        final = {k: v.detach().clone() for k, v in module.state_dict().items()}
        try:
            module.load_state_dict(state)
            module.eval()
            return self.evaluate_now()["metrics"]
        finally:
            module.load_state_dict(final)
            module.eval()

    def final_points(self, points: list[dict], honest: dict[str, float]
                     ) -> tuple[list[dict], dict[str, Any]]:
        """The selected point tested (its kept weights scored once), the other points
        untested (``metrics: None``) except the final, honest one."""
        if not points:
            return points, {}
        key = self.select_on
        for p in points:
            if p[key] is None:  # a final point: the run's own value
                p[key] = honest[key]
        if finite(points[-1][key]) > self._best_value:
            self._best_label, self._best_state = points[-1]["label"], None
        selected = self._selected_metrics()
        label = self._best_label
        return [dict(p, metrics=selected or dict(honest)) if p["label"] == label else
                dict(p, metrics=None) if p["metrics"] == "pending" else p for p in points], {}

    def reported(self, points: list[dict], best: int) -> tuple[dict[str, float], str]:
        """The first strictly best point, as the original; the last one when fit evaluated
        nothing (no hook was called)."""
        chosen = next((p for p in points if p["label"] == self._best_label), points[-1])
        return chosen["metrics"], f"{chosen['label']} ({self.selected_what})"
