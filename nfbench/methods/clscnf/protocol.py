"""CLS-CNFs' original evaluation protocol (evaluate.py; docs/original-code.md §1b, §4).

AD-CLSCNFs evaluated its last-epoch weights with ``n_max`` over the test set and w chosen per
category by pixel AUPR (``auc(recall, precision)``) against the test ground truth over
{0.05, ..., 1.0} (``--get_best_w_fe``). The CLS-CNFs paper's FE_PRE-CNFs rows (CFlow-AD,
``protocol: clscnf`` in the spec) read :class:`nfbench.methods.cflow.protocol.CFlowProtocol`'s
``by_protocol["clscnf"]``."""

from __future__ import annotations

from typing import Any

import numpy as np

from nfbench import metrics
from nfbench.methods.protocol import OriginalProtocol, mean_metrics


class CLSCNFProtocol(OriginalProtocol):
    """The final model only: both normalisations and the test-AUPR-best w."""

    name = "clscnf"
    description = ("AD-CLSCNFs (and the CLS-CNFs paper's FE_PRE-CNFs = CFlow-AD rows, `protocol: "
                   "clscnf` in the spec) evaluated its last-epoch weights with n_max over the "
                   "test set and w chosen per category by pixel AUPR (auc(recall, precision)) on "
                   "the test set over {0.05, ..., 1.0}.")
    reported_as = "last epoch, test-AUPR-best w, test-set n_max"
    evaluates_during_fit = False
    normalization_at_last = True

    def _final(self) -> dict[str, Any]:
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
                    values.append(metrics.pixel_aupr_clscnf(self.truth(name, test)[1],
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
                per_test[name] = self.metrics(name, test,
                                              pixel.flatten(1).max(dim=1).values.numpy(),
                                              pixel.float().numpy())
            out.setdefault("normalization", {})[mode] = mean_metrics(per_test)
        return out

    def final_points(self, points: list[dict], honest: dict[str, float]
                     ) -> tuple[list[dict], dict[str, Any]]:
        """One point, the last epoch, scored transductively; ``w``: the grid and its choice."""
        final = self._final()
        points = [{"label": "last epoch", "metrics": final["normalization"]["transductive"],
                   "normalization": final["normalization"]}]
        return points, ({"w": final["w"]} if "w" in final else {})

    def reported(self, points: list[dict], best: int) -> tuple[dict[str, float], str]:
        return points[-1]["metrics"], "last epoch, test-AUPR-best w, transductive n_max"
