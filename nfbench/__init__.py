"""nfbench: a reproducibility benchmark suite for normalizing-flow anomaly detection.

The public entry points are the method registry (:mod:`nfbench.methods`), the dataset
loaders (:mod:`nfbench.datasets`), the shared metrics (:mod:`nfbench.metrics`) and the
one-run driver (:mod:`nfbench.pipeline.experiment`).
"""

__version__ = "0.1.0"
