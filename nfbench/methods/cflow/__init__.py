"""CFlow-AD: conditional normalizing flows on frozen WideResNet-50-2 fibers (registered "cflow")."""

from nfbench.methods.cflow.config import CFlowConfig
from nfbench.methods.cflow.detector import CFlowDetector
from nfbench.methods.cflow.torch_model import CFlowModel

Config, Detector = CFlowConfig, CFlowDetector

__all__ = ["CFlowConfig", "CFlowDetector", "CFlowModel", "Config", "Detector"]
