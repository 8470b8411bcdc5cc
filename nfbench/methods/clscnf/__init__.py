"""CLS-CNFs (Oh & Kim, IEEE Access 2024): synthetic-defect classifier + conditional flows sharing a
fine-tuned feature extractor (registered "clscnf")."""

from nfbench.methods.clscnf.model import ORIGINAL_W, CLSCNFConfig, CLSCNFDetector

__all__ = ["ORIGINAL_W", "CLSCNFConfig", "CLSCNFDetector"]
