"""PatchFlow (Zhang et al., AAAI-W AI2ASE 2024): patch-aggregated multi-scale features, a
feature adapter and a normalizing flow.

``config`` (:class:`PatchFlowConfig`), ``flow`` (aggregation, adapter + flow, loss, map),
``torch_model`` (features → scores and images → scores modules), ``detector``
(:class:`PatchFlowDetector`). Its synthetic validation anomalies live in
:mod:`nfbench.methods.synthetic`."""

from nfbench.methods.patchflow.config import (ADAPTER_TRAINING, ADAPTERS, VALIDATIONS,
                                              PatchFlowConfig)
from nfbench.methods.patchflow.detector import PatchFlowDetector
from nfbench.methods.patchflow.flow import (
    PatchFlowNet,
    adapter_log_volume,
    aggregate_features,
    aggregated_channels,
    anomaly_map,
    build_flow,
    nll_loss,
    upsample_and_pad,
)
from nfbench.methods.patchflow.torch_model import PatchFlowImageModel, PatchFlowModel

__all__ = ["PatchFlowNet", "adapter_log_volume", "aggregate_features", "aggregated_channels",
           "anomaly_map", "build_flow", "nll_loss", "upsample_and_pad", "ADAPTERS",
           "ADAPTER_TRAINING", "VALIDATIONS", "PatchFlowConfig", "PatchFlowDetector",
           "PatchFlowImageModel", "PatchFlowModel"]
