"""anomalib 2.7 PatchFlow (``models/image/patchflow``) on our cached PatchFlow features.

anomalib's own ``PatchflowModel`` is built and run end to end (crop, pyramid, 3x3 average
pooling, bilinear fusion, 1x1 adaptor, ``SequenceINN`` of ``AllInOneBlock``, anomaly map, max
score); only its ``TimmFeatureExtractor`` is replaced by :class:`CachedEncoder`, which returns
our cached maps of the same layers and scales. Training mirrors ``lightning_model.py``:
``PatchflowLoss``, Adam(lr 1e-3, weight decay 1e-4), no gradient clipping, shuffled batches.

On identical features anomalib's remaining PatchFlow defaults equal the paper's/code's
(adaptor 128 channels, flow hidden 128 -> here the profile's ``hidden``, one flow step,
plain Eq. 5 with the adaptor trained jointly): its deviations (timm stage-end taps with other
channel counts, a bilinear input pyramid) live in the backbone, which the cached features
replace. ``matched`` therefore changes nothing and the stage runs ``shipped`` only.
"""

from __future__ import annotations

import numpy as np
import torch

from nfbench.errors import UserError
from nfbench.feature_cache import cached_features
from nfbench.peers.common import epochs, CachedEncoder, PeerResult, index_images, substituted

STRIDES = {"stride8": 8, "stride16": 16, "stride32": 32}


def fit_and_score(cfg, train, test, config: str, seed: int,
                  device: torch.device = torch.device("cpu")) -> PeerResult:
    from anomalib.models.image.patchflow import torch_model
    from anomalib.models.image.patchflow.loss import PatchflowLoss

    if cfg.crop_size and cfg.crop_size < cfg.input_size:
        raise UserError("peer patchflow runs on uncropped features only (crop_size=0); "
                        f"this profile crops to {cfg.crop_size}")
    if cfg.subnet != "code" or cfg.adapter != "code":
        raise UserError("anomalib's PatchFlow has the code's subnet and a 128-channel adaptor "
                        "only (subnet=code, adapter=code)")
    strides = [STRIDES.get(layer, 8) for layer in cfg.layers]
    feats = lambda images: cached_features(cfg.backbone, list(cfg.layers), images,
                                           n_scales=cfg.n_scales, progress=False)
    settings = {"flow_steps": cfg.flow_steps, "flow_feature_dim": 128, "num_scales": cfg.n_scales,
                "patch_size": cfg.patch_size, "flow_hidden_dim": cfg.hidden, "crop_size": None,
                "lr": 1e-3, "weight_decay": 1e-4, "gradient_clip_val": 0,
                "epochs": cfg.epochs, "batch_size": cfg.batch_size}

    def model_for(features):
        encoder = lambda **kw: CachedEncoder(features, cfg.layers, cfg.input_size, strides)
        with substituted(torch_model, "TimmFeatureExtractor", encoder):
            return torch_model.PatchflowModel(
                input_size=(cfg.input_size, cfg.input_size), backbone="cached", pre_trained=False,
                flow_steps=cfg.flow_steps, flow_feature_dim=128, num_scales=cfg.n_scales,
                patch_size=cfg.patch_size, flow_hidden_dim=cfg.hidden, crop_size=None).to(device)

    model = model_for(feats(train))
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"],
                                 weight_decay=settings["weight_decay"])
    loss_fn, generator = PatchflowLoss(), torch.Generator().manual_seed(seed)
    n, history = len(train), []
    for epoch in epochs(cfg.epochs, "patchflow"):
        model.train()
        order, losses = torch.randperm(n, generator=generator), []
        for start in range(0, n, cfg.batch_size):
            hidden, jac = model(index_images(order[start:start + cfg.batch_size], cfg.input_size,
                                             device))
            loss = loss_fn(hidden, jac)
            if not torch.isfinite(loss):
                raise RuntimeError(f"anomalib PatchFlow loss became {loss.item()} at epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        history.append(float(np.mean(losses)))

    # the same trained weights, reading the test set's cached maps
    test_features = feats(test)
    model.feature_extractor = CachedEncoder(test_features, cfg.layers, cfg.input_size, strides)
    model.eval()
    image, pixel = [], []
    with torch.no_grad():
        for start in range(0, len(test), 16):
            out = model(index_images(torch.arange(start, min(start + 16, len(test))), cfg.input_size,
                                     device))
            image.append(out.pred_score.reshape(-1).cpu())
            pixel.append(out.anomaly_map[:, 0].cpu())
    return PeerResult(torch.cat(image).double().numpy(), torch.cat(pixel).float().numpy(),
                      settings, (), tuple(history))
