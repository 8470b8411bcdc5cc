"""nfbench: a reproducibility benchmark suite for normalizing-flow anomaly detection.

The public entry points are the method registry (:mod:`nfbench.methods`), the dataset
loaders (:mod:`nfbench.datasets`), the shared metrics (:mod:`nfbench.metrics`) and the
one-run driver (:mod:`nfbench.pipeline.experiment`).
"""

from nfbench.version import __version__  # noqa: F401


def __getattr__(name: str):
    """``nfbench.load_detector`` / ``save_detector`` (:mod:`nfbench.artifacts`), imported on
    first use so that ``import nfbench`` stays light."""
    if name in ("load_detector", "save_detector"):
        from nfbench import artifacts

        return getattr(artifacts, name)
    raise AttributeError(f"module 'nfbench' has no attribute {name!r}")
