"""PatchFlow (Zhang et al., AAAI-W AI2ASE 2024): patch-aggregated multi-scale features, a
feature adapter and a normalizing flow."""

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
from nfbench.methods.patchflow.model import PatchFlowConfig, PatchFlowDetector, synthetic_anomaly

__all__ = ["PatchFlowNet", "adapter_log_volume", "aggregate_features", "aggregated_channels",
           "anomaly_map", "build_flow", "nll_loss", "upsample_and_pad", "PatchFlowConfig",
           "PatchFlowDetector", "synthetic_anomaly"]
