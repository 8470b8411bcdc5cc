"""CFlow-AD: conditional normalizing flows on frozen WideResNet-50-2 fibers (registered "cflow")."""

from nfbench.methods.cflow.model import CFlowConfig, CFlowDetector

__all__ = ["CFlowConfig", "CFlowDetector"]
