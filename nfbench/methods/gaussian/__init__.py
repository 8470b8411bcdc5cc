"""The suite's sanity baseline: a per-position Gaussian density on frozen features
(PaDiM, Defard et al., ICPR 2021), scored by Mahalanobis distance.

``config`` (:class:`GaussianConfig`), ``torch_model`` (features → scores and images → scores
modules), ``detector`` (:class:`GaussianDetector`)."""

from nfbench.methods.gaussian.config import GaussianConfig
from nfbench.methods.gaussian.detector import GaussianDetector
from nfbench.methods.gaussian.torch_model import GaussianImageModel, GaussianModel, gaussian_blur

__all__ = ["GaussianConfig", "GaussianDetector", "GaussianImageModel", "GaussianModel",
           "gaussian_blur"]
