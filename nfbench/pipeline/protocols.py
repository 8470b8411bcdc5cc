"""The originals' evaluation protocols, measured beside the suite's honest numbers.

The suite reports the last epoch, scored without test labels. The original codes chose what
they printed on the test set (docs/original-code.md §1a-§1d, §4 "Test-set model selection"):

* CS-Flow (train.py, ``Score_Observer``): a test evaluation every ``sub_epochs`` (4 over the
  run, meta_epochs 4 x sub_epochs 60) and the maximum image AUROC printed.
* PatchFlow (train.py): the epoch with the best pixel AUROC on synthetic anomalies made from
  20 % of the training images, which it also trains on.
* CFlow-AD (train.py): a test evaluation after every meta-epoch, every metric reported as its
  maximum over meta-epochs, scores normalised by test-set maxima (per map and final).
* CLS-CNFs (evaluate.py): last-epoch weights, ``n_max`` over the test set, and w chosen per
  category by pixel AUPR (``auc(recall, precision)``) against the test ground truth over
  {0.05, ..., 1.0} (``--get_best_w_fe``).

One run measures both: a method's ``fit(train, evaluate=...)`` calls ``evaluate(label)`` at the
original's evaluation points (scaled to the run's budget, :func:`nfbench.methods.base.evaluation_epochs`);
:class:`OriginalProtocol` scores the test set there with :func:`nfbench.metrics.compute_all`
and, after the honest evaluation, :meth:`OriginalProtocol.finish` returns
``record["original_protocol"]``. Every evaluation runs under a forked RNG, so the honest
numbers of a run are the same with or without it. Nothing here trains.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch

from nfbench import metrics

#: One line per protocol, for reports.
DESCRIPTIONS = {
    "csflow": "CS-Flow's train.py tested every sub_epochs (4 evaluations over the run) and printed "
              "the best image AUROC; here image AUROC at epochs round(k·E/4), k = 1..4, and every "
              "metric of the best one (its weights kept and scored once).",
    "patchflow": "PatchFlow's train.py kept the epoch with the best pixel AUROC on synthetic "
                 "anomalies made from 20 % of the training images, which it also trains on; "
                 "here that validation after every epoch, and the test set scored once, on the "
                 "selected epoch's weights.",
    "cflow": "CFlow-AD's train.py tested after every meta-epoch with test-set maxima (per map and "
             "final) and reported every metric's maximum over meta-epochs.",
    "clscnf": "AD-CLSCNFs (and the CLS-CNFs paper's FE_PRE-CNFs = CFlow-AD rows, `protocol: "
              "clscnf` in the spec) evaluated its last-epoch weights with n_max over the test set and w "
              "chosen per category by pixel AUPR (auc(recall, precision)) on the test set over "
              "{0.05, ..., 1.0}.",
}


#: What each protocol reports, in a few words (companion tables).
REPORTED_AS = {
    "csflow": "best of 4 test evaluations",
    "patchflow": "epoch selected on synthetic validation",
    "cflow": "each metric's max over meta-epochs, test-set maxima",
    "clscnf": "last epoch, test-AUPR-best w, test-set n_max",
}


#: Protocols that select on one value per evaluation point and test only the selected
#: weights with every metric (the value each point records).
SELECT_THEN_TEST = {"csflow": "image_auroc", "patchflow": "validation_pixel_auroc"}


def _mean_metrics(per_test: dict[str, dict[str, float]]) -> dict[str, float]:
    first = next(iter(per_test.values()))
    return {k: float(np.nanmean([m[k] for m in per_test.values()])) if any(
        math.isfinite(m[k]) for m in per_test.values()) else float("nan") for k in first}


class OriginalProtocol:
    """Evaluations of one run at the original's evaluation points, and what it would report.

    ``tests`` maps category to test set (several for joint training: metrics are averaged
    over categories like the record's). ``seconds`` is the time spent here (scoring and
    metrics), which the run's ``fit_seconds`` excludes.
    """

    def __init__(self, method: str, detector: Any, train: Any, tests: dict[str, Any], seed: int):
        self.method, self.detector, self.train, self.tests, self.seed = \
            method, detector, train, tests, seed
        self.points: list[dict[str, Any]] = []
        self.seconds = 0.0
        self._truth: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._features: dict[str, Any] = {}
        self._validation: tuple[Any, np.ndarray] | None = None
        # the selection so far (select-then-test protocols): the first strictly best point
        self._best_value = -math.inf
        self._best_label: str | None = None
        self._best_state: dict[str, torch.Tensor] | None = None

    # -- the hook ----------------------------------------------------------------------
    def fit_kwargs(self) -> dict[str, Callable[[str], None]]:
        """What ``fit`` receives: the callback, for methods whose original tested during
        training (CLS-CNFs' protocol needs only the final model)."""
        return {"evaluate": self} if self.method in ("csflow", "patchflow", "cflow") else {}

    def _final_is_honest(self, label: str) -> bool:  # noqa: D401
        """Whether this point is the last epoch and the fitted model is that epoch's, so that
        its metrics are the run's honest ones (computed once, by the run)."""
        done, _, total = label.rpartition(" ")[2].partition("/")
        if self.method == "csflow":
            return done == total
        if self.method == "patchflow":
            return done == total and self.detector.config.validation == "none"
        return False

    def __call__(self, label: str) -> None:
        """Score the test set(s) now (an evaluation point of the original)."""
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            numpy_state = np.random.get_state()
            try:
                if self.method in SELECT_THEN_TEST:  # only the selection value here
                    point = self._select_point(label)
                else:
                    point = {"label": label, **self._evaluate_now()}
            finally:
                np.random.set_state(numpy_state)
        self.points.append(point)
        self.seconds += time.perf_counter() - start

    def _truth_of(self, name: str, test: Any) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._truth:
            self._truth[name] = (np.asarray(test.labels), test.load_masks())
        return self._truth[name]

    def _metrics(self, name: str, test: Any, image: np.ndarray, pixel: np.ndarray) -> dict:
        labels, masks = self._truth_of(name, test)
        return metrics.compute_all(labels, image, masks, pixel)

    def _evaluate_now(self) -> dict[str, Any]:
        if self.method == "cflow":
            return self._cflow_point()
        per_test = {}
        for name, test in self.tests.items():
            scores = self.detector.score(test)
            per_test[name] = self._metrics(name, test, scores.image, scores.pixel)
        return {"metrics": _mean_metrics(per_test)}

    # -- per-method scoring ------------------------------------------------------------
    def _cflow_point(self) -> dict[str, Any]:
        """Both normalisations from one pass of the flows: ``transductive`` (CFlow-AD: per-map
        and final maxima over the test set) and ``inductive`` (training-set maxima)."""
        from nfbench.methods.cnf.scoring import (anomaly_from_normal, layer_maxima,
                                                 log_likelihood_maps, normal_score_map)

        det = self.detector
        out: dict[str, dict[str, dict]] = {"transductive": {}, "inductive": {}}
        for name, test in self.tests.items():
            if name not in self._features:  # frozen encoder: the features never change
                self._features[name] = det._features(test)
            log_maps = log_likelihood_maps(det.nf_.flows, self._features[name],
                                           det.settings_.condition_dim, det.device)
            for mode in out:
                maxima = layer_maxima(log_maps) if mode == "transductive" else det.nf_.maxima
                normal = normal_score_map(log_maps, maxima, test.size)
                n_max = float(normal.max()) if mode == "transductive" else det.nf_.n_max
                pixel = anomaly_from_normal(normal, n_max)
                out[mode][name] = self._metrics(name, test, pixel.flatten(1).max(dim=1).values.numpy(),
                                                pixel.float().numpy())
        configured = det.settings_.normalization
        return {"metrics": _mean_metrics(out[configured]),
                "normalization": {mode: _mean_metrics(v) for mode, v in out.items()}}

    def _module(self) -> torch.nn.Module:
        return self.detector.model_

    def _select_point(self, label: str) -> dict[str, Any]:
        """The value the original selected on, now (CS-Flow: test image AUROC, PatchFlow:
        synthetic-validation pixel AUROC); the weights of the first strictly best point are
        kept and scored with every metric once, by :meth:`finish`. At a final point whose
        model is the honest one, CS-Flow's value is the run's own (filled in by finish)."""
        final = self._final_is_honest(label)
        key = SELECT_THEN_TEST[self.method]
        if self.method == "patchflow":
            value = self._patchflow_validation()
        elif final:
            return {"label": label, key: None, "metrics": None}
        else:
            value = float(np.mean([metrics.image_auroc(self._truth_of(n, t)[0],
                                                       self._image_scores(t))
                                   for n, t in self.tests.items()]))
        if _finite(value) > self._best_value:
            self._best_value, self._best_label = _finite(value), label
            self._best_state = None if final else \
                {k: v.detach().clone() for k, v in self._module().state_dict().items()}
        return {"label": label, key: value, "metrics": None if final else "pending"}

    def _image_scores(self, test: Any) -> np.ndarray:
        """The image scores alone where the detector can skip its pixel maps (CS-Flow)."""
        if hasattr(self.detector, "image_scores"):
            return self.detector.image_scores(test)
        return self.detector.score(test).image

    def _selected_metrics(self) -> dict[str, float] | None:
        """Every metric of the kept weights (``None``: the final, honest model's)."""
        state = self._best_state
        if state is None:
            return None
        module = self._module()
        final = {k: v.detach().clone() for k, v in module.state_dict().items()}
        try:
            module.load_state_dict(state)
            module.eval()
            return self._evaluate_now()["metrics"]
        finally:
            module.load_state_dict(final)
            module.eval()

    def _patchflow_validation(self) -> float:
        """Pixel AUROC on the original's synthetic validation set (20 % of the training
        images with synthetic anomalies; those images stay in training, as in the original)."""
        det = self.detector
        if self._validation is None:
            n = len(self.train)
            n_val = max(1, int(det.config.validation_fraction * n))
            indices = sorted(np.random.default_rng(self.seed + 7).choice(n, n_val, replace=False).tolist())
            images, masks = det._validation_set(self.train, indices)
            self._validation = (det._maps(images), masks)
        maps, masks = self._validation
        value = metrics.pixel_auroc(masks, det._pixel_maps(maps)[1])
        return float(value) if math.isfinite(value) else -math.inf

    def _clscnf_final(self) -> dict[str, Any]:
        """The final model under CLS-CNFs' protocol: both normalisations and the test-AUPR-best
        w over the original's grid (AUPR as its code computes it: ``pixel_aupr@clscnf``)."""
        det = self.detector
        cfg = det.settings_
        out: dict[str, Any] = {}
        maps_by_mode = {}
        for name, test in self.tests.items():
            inductive = det._score_maps(test, "train")
            # Eq. 8 with n_max over the scored set instead of the training set: with
            # A = n_max - N, max(N) over the test set is n_max_train - min(A_inductive)
            transductive = dict(inductive)
            if "nf" in inductive:
                transductive["nf"] = inductive["nf"] - inductive["nf"].min()
            maps_by_mode[name] = {"transductive": transductive, "inductive": inductive}
        joint = cfg.score_map == "joint"
        w_table: dict[float, float] = {}
        if joint:
            for w in cfg.w_grid:
                values = []
                for name, test in self.tests.items():
                    m = maps_by_mode[name]["transductive"]
                    values.append(metrics.pixel_aupr_clscnf(self._truth_of(name, test)[1],
                                                            (m["nf"] + w * m["cls"]).numpy()))
                w_table[float(w)] = float(np.mean(values))
            # the original keeps the last w reaching the maximum (``auc_pr == max(...)``)
            best_w = max(w_table, key=lambda w: (w_table[w], w))
            out["w"] = {"grid": list(w_table), "aupr_by_w": w_table, "selected": best_w,
                        "honest": float(det.w_), "selected_by": "pixel_aupr@clscnf on the test set"}
        for mode in ("transductive", "inductive"):
            per_test = {}
            for name, test in self.tests.items():
                m = maps_by_mode[name][mode]
                pixel = m["nf"] + out["w"]["selected"] * m["cls"] if joint else m[cfg.score_map]
                per_test[name] = self._metrics(name, test, pixel.flatten(1).max(dim=1).values.numpy(),
                                               pixel.float().numpy())
            out.setdefault("normalization", {})[mode] = _mean_metrics(per_test)
        return out

    # -- the result --------------------------------------------------------------------
    def finish(self, honest: dict[str, float]) -> dict[str, Any]:
        """``record["original_protocol"]``: the evaluation points, the test-selected point
        (best image AUROC over them, "as the original evaluated"), ``reported`` (what the
        original would have printed, per metric) and ``honest`` (the record's metrics)."""
        start = time.perf_counter()
        result: dict[str, Any] = {"protocol": self.method, "description": DESCRIPTIONS[self.method],
                                  "honest": dict(honest)}
        points = [dict(p, metrics=dict(honest)) if p["metrics"] is None else p for p in self.points]
        if self.method in SELECT_THEN_TEST and points:  # tested: the selected point, the last
            key = SELECT_THEN_TEST[self.method]
            for p in points:
                if p[key] is None:  # CS-Flow's final point: the run's own image AUROC
                    p[key] = honest["image_auroc"]
            if self.method == "csflow" and _finite(points[-1][key]) > self._best_value:
                self._best_label, self._best_state = points[-1]["label"], None
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                selected = self._selected_metrics()
            label = self._best_label
            points = [dict(p, metrics=selected or dict(honest)) if p["label"] == label else
                      dict(p, metrics=None) if p["metrics"] == "pending" else p for p in points]
        if self.method == "clscnf":
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                final = self._clscnf_final()
            points = [{"label": "last epoch", "metrics": final["normalization"]["transductive"],
                       "normalization": final["normalization"]}]
            if "w" in final:
                result["w"] = final["w"]
        if not points:  # no evaluation happened (e.g. a method without the hook)
            points = [{"label": "last epoch", "metrics": dict(honest)}]
        tested = [i for i, p in enumerate(points) if p["metrics"] is not None]
        best = max(tested, key=lambda i: _finite(points[i]["metrics"]["image_auroc"]))
        result["points"] = points
        result["selected"] = {"label": points[best]["label"], "index": best,
                              "selection": "best image AUROC over the tested evaluation points",
                              "metrics": points[best]["metrics"]}
        result["reported"], result["reported_as"] = self._reported(points, best)
        if self.method == "cflow":  # CLS-CNFs scored its FE_PRE-CNFs rows: last epoch, train u_i
            result["by_protocol"] = {
                "cflow": result["reported"],
                "clscnf": points[-1]["normalization"]["inductive"]}
        if any("normalization" in p for p in points):
            chosen = points[-1] if self.method == "clscnf" else points[best]
            result["normalization"] = {"at": chosen["label"], **chosen["normalization"]}
        self.seconds += time.perf_counter() - start
        result["seconds"] = self.seconds
        return result

    def _reported(self, points: list[dict], best: int) -> tuple[dict[str, float], str]:
        if self.method == "cflow":  # Score_Observer: every metric's max over meta-epochs
            keys = points[0]["normalization"]["transductive"]
            best_of = {k: max(_finite(p["normalization"]["transductive"][k]) for p in points)
                       for k in keys}
            return ({k: v if math.isfinite(v) else float("nan") for k, v in best_of.items()},
                    "every metric's maximum over meta-epochs, transductive")
        if self.method in SELECT_THEN_TEST:  # the first strictly best point, as the original
            # the selected point; the last one when fit evaluated nothing (no hook was called)
            chosen = next((p for p in points if p["label"] == self._best_label),
                          points[-1])
            what = {"patchflow": "best synthetic-validation pixel AUROC",
                    "csflow": "best test image AUROC"}[self.method]
            return chosen["metrics"], f"{chosen['label']} ({what})"
        if self.method == "clscnf":
            return points[-1]["metrics"], "last epoch, test-AUPR-best w, transductive n_max"
        return points[best]["metrics"], f"{points[best]['label']} (best test image AUROC)"


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def for_run(method: str, detector: Any, train: Any, tests: dict[str, Any],
            seed: int) -> OriginalProtocol | None:
    """The protocol recorder of a run, or ``None`` for methods without an original protocol."""
    if method not in DESCRIPTIONS:
        return None
    return OriginalProtocol(method, detector, train, tests, seed)
