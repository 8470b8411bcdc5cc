"""CLS-CNFs (Oh & Kim, IEEE Access 2024): synthetic-defect classifier + conditional flows sharing a
fine-tuned feature extractor (registered "clscnf")."""

from nfbench.methods.clscnf.config import ORIGINAL_W, W_GRID, CLSCNFConfig, parse_w
from nfbench.methods.clscnf.detector import COMPONENTS, CLSCNFDetector
from nfbench.methods.clscnf.torch_model import CLSCNFModel

Config, Detector = CLSCNFConfig, CLSCNFDetector

__all__ = ["ORIGINAL_W", "W_GRID", "CLSCNFConfig", "parse_w", "COMPONENTS", "CLSCNFDetector",
           "CLSCNFModel", "Config", "Detector"]
