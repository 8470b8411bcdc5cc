"""CS-Flow's original evaluation protocol (train.py, ``Score_Observer``; docs/original-code.md
§1a, §4).

The original tested every ``sub_epochs`` (meta_epochs 4 x sub_epochs 60: 4 evaluations over
the run) and printed the maximum image AUROC. Here: image AUROC at epochs round(k·E/4),
k = 1..4 (:func:`nfbench.methods.base.evaluation_epochs`), and every metric of the best one,
its weights kept and scored once."""

from __future__ import annotations

import numpy as np
import torch

from nfbench import metrics
from nfbench.methods.protocol import SelectThenTest


class CSFlowProtocol(SelectThenTest):
    """Select on test image AUROC at the 4 evaluation points; the final point is the run's."""

    name = "csflow"
    description = ("CS-Flow's train.py tested every sub_epochs (4 evaluations over the run) and "
                   "printed the best image AUROC; here image AUROC at epochs round(k·E/4), "
                   "k = 1..4, and every metric of the best one (its weights kept and scored "
                   "once).")
    reported_as = "best of 4 test evaluations"
    select_on = "image_auroc"
    selected_what = "best test image AUROC"

    def module(self) -> torch.nn.Module:
        return self.detector.model_

    def select_value(self, label: str, final: bool) -> float | None:
        """Test image AUROC averaged over the test sets, from the image scores alone (no
        pixel maps built); at the final point the run's own (``None``)."""
        if final:
            return None
        return float(np.mean([metrics.image_auroc(self.truth(n, t)[0],
                                                  self.detector.image_scores(t))
                              for n, t in self.tests.items()]))
