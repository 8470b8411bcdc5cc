"""CFlow-AD's settings: the shared CNF settings (:mod:`nfbench.methods.cnf.config`) at
CFlow-AD's MVTec AD defaults, plus the encoder maps it reads."""

from __future__ import annotations

from dataclasses import dataclass

from nfbench.methods.cnf.config import CNFMethodConfig
from nfbench.methods.cnf.encoder import LAYERS


@dataclass(frozen=True)
class CFlowConfig(CNFMethodConfig):
    """Defaults are CFlow-AD's MVTec AD setting (gudovskiy/cflow-ad main.py / config.py)."""

    layers: tuple[str, ...] = LAYERS  # cflow-ad pool_layers L=3: layer2, layer3, layer4
