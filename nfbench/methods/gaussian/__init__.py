"""The suite's sanity baseline: a per-position Gaussian density on frozen features
(PaDiM, Defard et al., ICPR 2021), scored by Mahalanobis distance."""

from nfbench.methods.gaussian.model import GaussianConfig, GaussianDetector

__all__ = ["GaussianConfig", "GaussianDetector"]
