"""CS-Flow (Rudolph et al., WACV 2022): the fully convolutional cross-scale flow.

``config`` (:class:`CSFlowConfig`), ``flow`` (the cross-scale flow, loss, scores),
``torch_model`` (features → scores and images → scores modules), ``detector``
(:class:`CSFlowDetector`, the Detector protocol)."""

from nfbench.methods.csflow.config import SCALE_MODES, CSFlowConfig
from nfbench.methods.csflow.detector import CSFlowDetector
from nfbench.methods.csflow.flow import build_cs_flow, image_score, localization_map, nll_loss
from nfbench.methods.csflow.torch_model import (CSFlowImageModel, CSFlowModel, SeparateFlows,
                                                build_flow, flow_inputs)

__all__ = ["build_cs_flow", "image_score", "localization_map", "nll_loss", "SCALE_MODES",
           "CSFlowConfig", "CSFlowDetector", "CSFlowImageModel", "CSFlowModel", "SeparateFlows",
           "build_flow", "flow_inputs"]
