"""Training the conditional flows (Alg. 1 step 2) and CFlow-AD's learning-rate schedule:
fibers shuffled (randperm) into batches of ``fiber_batch``; one Adam over all flows; cosine
learning rate with a warm-up from lr/10 and eta_min = lr * ``lr_min_factor``."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from nfbench.methods.base import EpochLosses, adam, compiled_step
from nfbench.methods.cnf.config import CNFSettings
from nfbench.methods.cnf.flows import fibers, log_likelihood, nf_loss, positional_encoding_2d


def warmup_meta_epochs(settings: CNFSettings) -> float:
    """Length of the warm-up in meta-epochs of this run: the original's ``warm_epochs`` of
    ``schedule_meta_epochs`` (CFlow-AD: 2 of 25) scaled to the ``meta_epochs`` actually run,
    so a shorter run warms up over the same share of it (2 of 25 = 8 %; 0.24 of 3)."""
    return settings.warm_epochs * settings.meta_epochs / max(settings.schedule_meta_epochs, 1)


def learning_rate(settings: CNFSettings, meta_epoch: int, progress: float) -> float:
    """CFlow-AD's schedule over the meta-epochs actually run: cosine from ``lr`` to
    ``lr * lr_min_factor`` with period ``meta_epochs``, stepped once per meta-epoch, after a
    linear warm-up from ``lr/10`` to the cosine's value at the end of the warm-up, which lasts
    :func:`warmup_meta_epochs` (``progress`` in [0, 1) is the position inside the current
    meta-epoch). At ``meta_epochs == schedule_meta_epochs`` this is the original exactly."""
    lr, eta_min = settings.lr, settings.lr * settings.lr_min_factor
    total = max(settings.meta_epochs, 1)
    warm = warmup_meta_epochs(settings)

    def cosine(epoch: float) -> float:
        return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / total)) / 2

    if meta_epoch + progress < warm:
        start, end = lr / 10, cosine(warm)
        return start + (meta_epoch + progress) / warm * (end - start)
    return cosine(max(meta_epoch, warm))


def schedule_info(settings: CNFSettings) -> dict:
    """The effective CNF training schedule as a JSON-able dict (detectors' ``fit_info_``)."""
    warm = warmup_meta_epochs(settings)
    return {"meta_epochs": settings.meta_epochs, "sub_epochs": settings.sub_epochs,
            "warmup_meta_epochs": warm,
            "lr_schedule": "warmup+cosine" if warm > 0 else "cosine",
            "lr": settings.lr, "lr_warmup_from": settings.lr / 10,
            "lr_min": settings.lr * settings.lr_min_factor,
            "schedule_of": f"warm-up {settings.warm_epochs} of {settings.schedule_meta_epochs} "
                           f"meta-epochs, scaled to {settings.meta_epochs}",
            "fiber_batch": settings.fiber_batch, "fiber_fraction": settings.fiber_fraction,
            "batch_size": settings.batch_size,
            "permutation": "soft" if settings.permute_soft else "hard"}


def _fiber_loss(flow: nn.Module, y: Tensor, cond: Tensor) -> Tensor:
    """The loss of one fiber batch (the step ``compile: true`` hands to ``torch.compile``)."""
    z, log_jac = flow(y, c=[cond])
    return nf_loss(log_likelihood(z, log_jac), y.shape[1])


def _sub_epoch_permutations(n: int, features: Sequence[Tensor], settings: CNFSettings,
                            generator: torch.Generator, device: torch.device
                            ) -> tuple[Tensor, list[list[Tensor]]]:
    """One sub-epoch's image order and, per batch and map, its fiber order, drawn up front in
    the order the loop used to draw them from ``generator`` (the same stream) and copied to
    ``device`` at once: no host-to-device copy inside the sub-epoch."""
    order = torch.randperm(n, generator=generator)
    perms = []
    for start in range(0, n, settings.batch_size):
        batch = min(settings.batch_size, n - start)
        row = []
        for fmap in features:
            perm = torch.randperm(batch * fmap.shape[2] * fmap.shape[3], generator=generator)
            if settings.fiber_fraction < 1.0:
                keep = max(1, int(round(perm.numel() * settings.fiber_fraction)))
                perm = perm[:keep]
            row.append(perm)
        perms.append(row)
    if device.type == "cpu":
        return order, perms
    flat = torch.cat([order, *(p for row in perms for p in row)]).to(device, non_blocking=True)
    parts = iter(flat.split([order.numel()] + [p.numel() for row in perms for p in row]))
    order = next(parts)
    return order, [[next(parts) for _ in row] for row in perms]


def train_flows(flows: nn.ModuleList, features: Sequence[Tensor], settings: CNFSettings,
                generator: torch.Generator, device: torch.device, desc: str = "CNF fit",
                progress: bool = True,
                on_meta_epoch: Callable[[int], None] | None = None) -> list[float]:
    """Train ``flows`` on the fibers of ``features`` (one ``[N, C_i, h_i, w_i]`` tensor per map,
    normal images only; Alg. 1 lines 19-33).

    Per meta-epoch and sub-epoch the images are shuffled into batches of ``batch_size``; for each
    batch and each map the fibers are shuffled into fiber batches of ``fiber_batch`` and the
    shared Adam optimizer takes one step per fiber batch. ``fiber_fraction < 1`` keeps only that
    share of each batch's shuffled fibers (a budget knob, not in the original). Raises
    :class:`TrainingDivergedError` on a non-finite loss. Returns the mean loss per meta-epoch.
    ``on_meta_epoch(m)``, if given, is called after meta-epoch ``m`` (1-based), where the
    original tested (nfbench.methods.cflow.protocol).
    """
    n = features[0].shape[0]
    encodings = [positional_encoding_2d(settings.condition_dim, f.shape[2], f.shape[3]).to(device)
                 for f in features]
    features = [f.to(device) for f in features]  # resident on the device for the whole fit
    optimizer = adam(flows.parameters(), device, lr=settings.lr)
    n_batches = math.ceil(n / settings.batch_size)
    total_steps = settings.sub_epochs * n_batches
    fiber_loss = compiled_step(_fiber_loss, settings.compile)
    history = []
    flows.train()
    losses = EpochLosses("CNF")
    bar = tqdm(range(settings.meta_epochs), desc=desc, leave=False, disable=not progress)
    for meta in bar:
        for sub in range(settings.sub_epochs):
            order, perms = _sub_epoch_permutations(n, features, settings, generator, device)
            for b in range(n_batches):
                step = sub * n_batches + b
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(settings, meta, step / total_steps)
                index = order[b * settings.batch_size:(b + 1) * settings.batch_size]
                for layer, (flow, fmap) in enumerate(zip(flows, features)):
                    y, cond = fibers(fmap[index], encodings[layer])
                    perm = perms[b][layer]
                    for start in range(0, perm.numel(), settings.fiber_batch):
                        idx = perm[start:start + settings.fiber_batch]
                        losses.step(optimizer, fiber_loss(flow, y[idx], cond[idx]),
                                    f"meta-epoch {meta + 1}, sub-epoch {sub + 1}, "
                                    f"batch {b + 1}, map {layer}")
        history.append(losses.end_epoch())
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        if on_meta_epoch is not None:
            on_meta_epoch(meta + 1)
    flows.eval()
    return history
