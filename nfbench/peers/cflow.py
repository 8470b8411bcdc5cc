"""anomalib 2.7 CFlow (``models/image/cflow``) on our cached CFlow-AD features.

anomalib's own ``CflowModel`` is built (its ``cflow_head`` decoders, one per layer) with its
``TimmFeatureExtractor`` replaced by :class:`CachedEncoder` (our cached maps of the same
layers), and scored by its own ``forward`` (per-layer ``exp(logp - max)``, bilinear
upsampling with align_corners, ``max - map``, image score = max of the map). Training mirrors
``Cflow.training_step``: per image batch and layer, the fibers are shuffled, cut into
``E // fiber_batch`` fiber batches (the last takes the remainder), and one Adam step on
``-logsigmoid(get_logp / C)`` is taken per fiber batch; Adam over the decoders, lr 1e-4.

``shipped``: anomalib's defaults: fiber batch 64, constant lr 1e-4, hard permutations, every
fiber of every batch (anomalib never subsamples), likelihoods normalised per scored batch of 32
images (anomalib's eval batch). ``matched`` changes exactly the deviations listed in
``deviations.yaml`` to our run's values: our fiber batch, our lr with CFlow-AD's warm-up +
cosine schedule (``nfbench.methods.cnf.training.learning_rate``), soft permutations, our
``fiber_fraction`` share of each batch's fibers, the whole test set scored as one batch
(CFlow-AD's test-set maxima, like our ``transductive`` normalisation). Both take from our run
what ``takes_from_ours`` names: the features (backbone, layers and padding: with reflect padding
they are computed for the peer by our frozen encoder, ``methods.cnf.encoder.frozen_features``,
as our run computes them), the input size, the flow's size and the passes (image batch,
``meta_epochs * sub_epochs``), and run on our run's device.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from nfbench.errors import UserError
from nfbench.peers.common import epochs, CachedEncoder, PeerResult, index_images, substituted

#: anomalib 2.7 ``models/image/cflow/lightning_model.py`` ``Cflow.__init__`` defaults (lines
#: 85-91): fiber_batch_size=64, permute_soft=False, lr=0.0001; ``configure_optimizers``: Adam
#: without a scheduler; ``training_step`` uses every fiber; eval batch: the datamodules' 32.
SHIPPED = {"fiber_batch_size": 64, "lr": 1e-4, "eval_batch_size": 32}


def fit_and_score(cfg, train, test, config: str, seed: int,
                  device: torch.device = torch.device("cpu")) -> PeerResult:
    import einops
    from anomalib.models.image.cflow import torch_model
    from anomalib.models.image.cflow.utils import get_logp, positional_encoding_2d

    from nfbench.methods.cnf.encoder import frozen_features
    from nfbench.methods.cnf.training import learning_rate

    matched = config == "matched"
    # zeros: the shared feature cache; reflect: computed by our frozen encoder, as our run does
    feats = lambda images: [frozen_features(cfg.backbone, list(cfg.layers), cfg.padding, images,
                                            device)[0]]
    fiber_batch = cfg.fiber_batch if matched else SHIPPED["fiber_batch_size"]
    fiber_fraction = cfg.fiber_fraction if matched else 1.0
    settings = {"fiber_batch_size": fiber_batch, "condition_vector": cfg.condition_dim,
                "coupling_blocks": cfg.n_blocks, "clamp_alpha": cfg.clamp,
                "permute_soft": bool(cfg.permute_soft) if matched else False,
                "lr": cfg.lr if matched else SHIPPED["lr"],
                "lr_schedule": "warm-up + cosine (CFlow-AD)" if matched else "constant",
                "epochs": cfg.meta_epochs * cfg.sub_epochs, "batch_size": cfg.batch_size,
                "fiber_fraction": fiber_fraction, "padding": cfg.padding,
                "eval_batch_size": len(test) if matched else SHIPPED["eval_batch_size"]}

    def model_for(features):
        encoder = lambda **kw: CachedEncoder(features, cfg.layers, cfg.input_size, [8, 16, 32])
        with substituted(torch_model, "TimmFeatureExtractor", encoder):
            return torch_model.CflowModel(
                backbone="cached", layers=list(cfg.layers), pre_trained=False,
                fiber_batch_size=fiber_batch, condition_vector=cfg.condition_dim,
                coupling_blocks=cfg.n_blocks, clamp_alpha=cfg.clamp,
                permute_soft=settings["permute_soft"]).to(device)

    model = model_for(feats(train))
    optimizer = torch.optim.Adam(model.decoders.parameters(), lr=settings["lr"])
    schedule = dataclasses.replace(cfg, fiber_batch=fiber_batch)
    generator = torch.Generator().manual_seed(seed)
    n, history = len(train), []
    n_batches = -(-n // cfg.batch_size)
    model.decoders.train()
    for epoch in epochs(settings["epochs"], "cflow"):
        meta, sub = divmod(epoch, cfg.sub_epochs)
        order, total = torch.randperm(n, generator=generator), 0.0
        for b in range(n_batches):
            if matched:  # our schedule; anomalib: constant lr
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(schedule, meta, (sub * n_batches + b) /
                                                (cfg.sub_epochs * n_batches))
            index = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            activation = model.encoder(index_images(index, cfg.input_size, device))
            for layer_idx, layer in enumerate(model.pool_layers):
                maps = activation[layer].detach()
                batch, dim, height, width = maps.size()
                pos = einops.repeat(positional_encoding_2d(model.condition_vector, height, width)
                                    .unsqueeze(0), "b c h w-> (tile b) c h w",
                                    tile=batch).to(device)
                c_r = einops.rearrange(pos, "b c h w -> (b h w) c")
                e_r = einops.rearrange(maps, "b c h w -> (b h w) c")
                perm = torch.randperm(batch * height * width, generator=generator)
                if fiber_fraction < 1.0:  # our budget knob (matched only: anomalib never subsamples)
                    perm = perm[:max(1, int(round(perm.numel() * fiber_fraction)))]
                length = perm.numel()
                fiber_batches = length // fiber_batch
                if fiber_batches <= 0 and matched:  # ours: one smaller fiber batch
                    fiber_batches = 1
                elif fiber_batches <= 0:  # anomalib's training_step raises here
                    raise UserError("too few fibers for anomalib's fiber batch: raise fiber_fraction")
                decoder = model.decoders[layer_idx]
                for k in range(fiber_batches):
                    stop = (k + 1) * fiber_batch if k < fiber_batches - 1 else length
                    idx = perm[k * fiber_batch:stop].to(device)
                    p_u, log_jac_det = decoder(e_r[idx], [c_r[idx]])
                    loss = -F.logsigmoid(get_logp(dim, p_u, log_jac_det) / dim)
                    if not torch.isfinite(loss.mean()):
                        raise RuntimeError(f"anomalib CFlow loss became non-finite at epoch {epoch + 1}")
                    optimizer.zero_grad(set_to_none=True)
                    loss.mean().backward()
                    optimizer.step()
                    total += float(loss.detach().sum())
        history.append(total)

    model.encoder = CachedEncoder(feats(test), cfg.layers, cfg.input_size, [8, 16, 32])
    image, pixel, step = [], [], settings["eval_batch_size"]
    with torch.no_grad():
        for start in range(0, len(test), step):
            out = model(index_images(torch.arange(start, min(start + step, len(test))),
                                     cfg.input_size, device))
            image.append(out.pred_score.reshape(-1).cpu())
            pixel.append(out.anomaly_map.reshape(-1, cfg.input_size, cfg.input_size).cpu())
    applied = (("fiber_batch_64", "lr_constant", "hard_permutation", "all_fibers",
                "batch_max_normalisation") if matched else ())
    return PeerResult(torch.cat(image).double().numpy(), torch.cat(pixel).float().numpy(),
                      settings, applied, tuple(history))
