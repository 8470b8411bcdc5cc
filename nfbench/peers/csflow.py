"""anomalib 2.7 CS-Flow (``models/image/csflow``) on our cached CS-Flow features.

The flow is anomalib's ``CrossScaleFlow`` built by its own ``_create_graph``; only the
channel count of its three ``InputNode``s is substituted (anomalib hard-codes B5's 304), so
that the demo's Lite0 maps fit. ``CsFlowModel`` itself is not built: its constructor loads
torchvision's EfficientNet-B5 weights, which the cached features replace. Training mirrors
``lightning_model.py``: ``CsFlowLoss`` on ``(z, jacobians)``, Adam(lr, eps 1e-4, weight decay
1e-5, betas (0.5, 0.9)), gradient-norm clipping 1 (``trainer_arguments``), shuffled batches
without drop_last. Scores: ``CsFlowModel._compute_anomaly_scores`` and ``AnomalyMapGenerator``.

``shipped`` is anomalib's own optimizer (lr 2e-4 fixed in ``configure_optimizers``) and scoring;
it takes from our run only what ``deviations.yaml`` ``takes_from_ours`` names (features, input
size, model size, passes). ``matched`` changes exactly the listed deviations to our run's values.
Both run on our run's device.

The log-determinant relation (verified in tests/test_peers.py): anomalib's coupling layer
returns ``sum_b log|J_b|`` (a scalar), which FrEIA's ``GraphINN`` adds to its ``zeros(B)``, so
every sample's ``jac`` entry is the batch sum and ``CsFlowLoss(z, jac) = mean_b(0.5|z_b|^2) -
sum_b log|J_b|``, all over D: exactly our per-sample ``nll_loss(z, B * log_jac)``, the
log-determinant weighted by the batch size B (the last, smaller batch of an epoch by its own
size). Gradients follow the same relation. ``matched`` passes ``jac / B``, which equals our
``nll_loss(z, log_jac)`` (the original get_loss).
"""

from __future__ import annotations

import numpy as np
import torch

from nfbench.errors import UserError
from nfbench.feature_cache import cached_features
from nfbench.peers.common import epochs, PeerResult, substituted

#: anomalib 2.7 ``models/image/csflow/lightning_model.py`` ``configure_optimizers``: lr=2e-4
SHIPPED_LR = 2e-4


def build_flow(channels: int, input_size: int, n_blocks: int, clamp: float, hidden: int):
    """anomalib's ``CrossScaleFlow`` for ``channels``-channel stride-32 maps of ``input_size`` px."""
    from FrEIA.framework import InputNode
    from anomalib.models.image.csflow import torch_model

    node = lambda _c, *dims, **kw: InputNode(channels, *dims, **kw)  # anomalib: InputNode(304, ...)
    with substituted(torch_model, "InputNode", node):
        return torch_model.CrossScaleFlow(input_dims=(3, input_size, input_size), n_coupling_blocks=n_blocks,
                              clamp=clamp, cross_conv_hidden_channels=hidden)


def loss(z, jacobians: torch.Tensor, batch: int, config: str) -> torch.Tensor:
    """anomalib's ``CsFlowLoss``; ``matched`` turns the batch-summed log-determinant into the
    per-sample mean (``jac / B``) so that the loss is the original's get_loss."""
    from anomalib.models.image.csflow.loss import CsFlowLoss

    return CsFlowLoss()(list(z), jacobians / batch if config == "matched" else jacobians)


def fit_and_score(cfg, train, test, config: str, seed: int,
                  device: torch.device = torch.device("cpu")) -> PeerResult:
    from anomalib.models.image.csflow.anomaly_map import AnomalyMapGenerator, AnomalyMapMode
    from anomalib.models.image.csflow.torch_model import CsFlowModel

    if cfg.scale_mode != "cross" or cfg.n_scales != 3:
        raise UserError("anomalib's CS-Flow has 3 cross-scale inputs: use scale_mode=cross, n_scales=3")
    matched = config == "matched"
    feats = lambda images: [m[0] for m in cached_features(cfg.backbone, [cfg.layer], images,
                                                          n_scales=3, progress=False)]
    inputs = [x.to(device) for x in feats(train)]
    flow = build_flow(inputs[0].shape[1], cfg.input_size, cfg.n_blocks, cfg.clamp,
                      cfg.hidden_channels).to(device)
    betas = tuple(cfg.adam_betas) if matched else (0.5, 0.9)
    settings = {"cross_conv_hidden_channels": cfg.hidden_channels, "n_coupling_blocks": cfg.n_blocks,
                "clamp": cfg.clamp, "kernel_sizes": flow.kernel_sizes,
                "lr": cfg.lr if matched else SHIPPED_LR,
                "eps": 1e-4 if not matched else cfg.adam_eps,
                "weight_decay": 1e-5 if not matched else cfg.weight_decay, "betas": list(betas),
                "gradient_clip_val": 1.0 if not matched else cfg.grad_clip,
                "epochs": cfg.epochs, "batch_size": cfg.batch_size,
                "log_jac": "per_sample" if matched else "batch_sum",
                "anomaly_map": "max" if matched else "all"}
    optimizer = torch.optim.Adam(flow.parameters(), lr=settings["lr"], eps=settings["eps"],
                                 weight_decay=settings["weight_decay"], betas=betas)
    generator = torch.Generator().manual_seed(seed)
    n, history = inputs[0].shape[0], []
    flow.train()
    for epoch in epochs(cfg.epochs, "csflow"):
        order, losses = torch.randperm(n, generator=generator), []
        for start in range(0, n, cfg.batch_size):
            index = order[start:start + cfg.batch_size]
            z, jac = flow([x[index.to(device)] for x in inputs])
            value = loss(z, jac, len(index), config)
            if not torch.isfinite(value):
                raise RuntimeError(f"anomalib CS-Flow loss became {value.item()} at epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), settings["gradient_clip_val"])
            optimizer.step()
            losses.append(value.item())
        history.append(float(np.mean(losses)))
    flow.eval()

    mode = AnomalyMapMode.MAX if matched else AnomalyMapMode.ALL
    maps = AnomalyMapGenerator(input_dims=(3, cfg.input_size, cfg.input_size), mode=mode)
    test_inputs, image, pixel = [x.to(device) for x in feats(test)], [], []
    with torch.no_grad():
        for start in range(0, test_inputs[0].shape[0], 32):
            z, _ = flow([x[start:start + 32] for x in test_inputs])
            image.append(CsFlowModel._compute_anomaly_scores(z).cpu())
            pixel.append(maps(z)[:, 0].cpu())
    applied = (("log_jac_batch_sum", "adam_betas", "anomaly_map_product", "lr_fixed",
                "optimizer_fixed") if matched else ())
    return PeerResult(torch.cat(image).numpy().astype(np.float64),
                      torch.cat(pixel).numpy().astype(np.float32), settings, applied,
                      tuple(history))
