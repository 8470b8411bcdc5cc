"""CS-Flow (Rudolph et al., WACV 2022): the fully convolutional cross-scale flow."""

from nfbench.methods.csflow.flow import build_cs_flow, image_score, localization_map, nll_loss
from nfbench.methods.csflow.model import CSFlowConfig, CSFlowDetector

__all__ = ["build_cs_flow", "image_score", "localization_map", "nll_loss", "CSFlowConfig",
           "CSFlowDetector"]
