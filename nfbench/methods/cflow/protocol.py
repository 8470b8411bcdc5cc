"""CFlow-AD's original evaluation protocol (train.py; docs/original-code.md §1c, §4).

The original tested after every meta-epoch, with scores normalised by test-set maxima (per map
and final), and reported every metric's maximum over meta-epochs. The CLS-CNFs paper scored
the same network (its FE_PRE-CNFs rows) at the last epoch with training-set ``u_i``: that is
this run's ``by_protocol["clscnf"]``."""

from __future__ import annotations

import math
from typing import Any

from nfbench.methods.cnf.scoring import (anomaly_from_normal, layer_maxima,
                                         log_likelihood_maps, normal_score_map)
from nfbench.methods.protocol import OriginalProtocol, finite, mean_metrics


class CFlowProtocol(OriginalProtocol):
    """Every metric at every meta-epoch, under both normalisations; the maximum reported."""

    name = "cflow"
    description = ("CFlow-AD's train.py tested after every meta-epoch with test-set maxima (per "
                   "map and final) and reported every metric's maximum over meta-epochs.")
    reported_as = "each metric's max over meta-epochs, test-set maxima"

    def __init__(self, detector, train, tests, seed):
        super().__init__(detector, train, tests, seed)
        self._features: dict[str, Any] = {}

    def evaluate_now(self) -> dict[str, Any]:
        """Both normalisations from one pass of the flows: ``transductive`` (CFlow-AD: per-map
        and final maxima over the test set) and ``inductive`` (training-set maxima)."""
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
                out[mode][name] = self.metrics(name, test,
                                               pixel.flatten(1).max(dim=1).values.numpy(),
                                               pixel.float().numpy())
        configured = det.settings_.normalization
        return {"metrics": mean_metrics(out[configured]),
                "normalization": {mode: mean_metrics(v) for mode, v in out.items()}}

    def reported(self, points: list[dict], best: int) -> tuple[dict[str, float], str]:
        """``Score_Observer``: every metric's maximum over meta-epochs, transductive."""
        keys = points[0]["normalization"]["transductive"]
        best_of = {k: max(finite(p["normalization"]["transductive"][k]) for p in points)
                   for k in keys}
        return ({k: v if math.isfinite(v) else float("nan") for k, v in best_of.items()},
                "every metric's maximum over meta-epochs, transductive")

    def by_protocol(self, points: list[dict], reported: dict[str, float]
                    ) -> dict[str, dict[str, float]]:
        """CLS-CNFs scored its FE_PRE-CNFs rows (this method): last epoch, train ``u_i``."""
        return {"cflow": reported, "clscnf": points[-1]["normalization"]["inductive"]}
