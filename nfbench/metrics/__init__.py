"""The one place where every method is measured (MVTec AD protocol).

Higher scores mean "more anomalous" everywhere.  Image-level: AUROC of one score per image.
Pixel-level: AUROC, average precision (AUPR), AUPRO up to an FPR limit (default 0.3) and the
maximal F1 over all thresholds, all computed over every pixel of every test image of a
category (Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021).

Every curve is built from ONE global descending sort of the scores followed by cumulative
sums, with one curve point per distinct score (ties are merged, never split).  Scores keep
their float dtype (float32 recommended: float16 is widened to float32, integers to float64),
so two scores are tied exactly when they are equal in that dtype.  Undefined metrics (one
class only, no defect region) are ``nan``; malformed inputs raise :class:`ValueError`.
"""

from nfbench.metrics.official import (METRIC_KEYS, aupro, compute_all, f1_max, f1_max_threshold,
                                      image_auroc, pixel_aupr, pixel_auroc)
from nfbench.metrics.variants import (METRIC_VARIANTS, aupro_clscnf, official_metric,
                                      pixel_aupr_clscnf, pixel_auroc_patchflow)

__all__ = ["image_auroc", "pixel_auroc", "pixel_aupr", "aupro", "f1_max", "f1_max_threshold",
           "pixel_aupr_clscnf", "aupro_clscnf", "pixel_auroc_patchflow", "compute_all",
           "METRIC_KEYS", "METRIC_VARIANTS", "official_metric"]
