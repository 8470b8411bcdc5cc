"""Conditional normalizing flows on feature fibers (CFlow-AD, Gudovskiy et al., WACV 2022), the
density part shared by ``cflow`` and ``clscnf`` (CLS-CNFs §III-B3, Eq. 2-8, Alg. 1 step 2, Alg. 2).

A *fiber* is the feature vector ``y_i^k`` (``C_i`` channels) of feature map ``i`` at position
``k``. One conditional flow per feature map maps fibers to Gaussian latents; every coupling
block also sees a 2-D sinusoidal positional encoding of the fiber's position::

    pe = positional_encoding_2d(128, h, w)                  # [128, h, w]
    flow = build_conditional_flow(C, n_blocks=8, cond_dim=128, clamp=1.9, seed=0)
    y, c = fibers(feature_map, pe)                           # [B*h*w, C], [B*h*w, 128]
    z, log_jac = flow(y, c=[c])                              # FrEIA SequenceINN
    log_p = log_likelihood(z, log_jac)                       # Eq. 3 (nats per fiber)
    loss = nf_loss(log_p, C)                                 # -log sigmoid(log p / C), Eq. 2

Facts from the original code (original-code.md §1b, §1c): FrEIA ``AllInOneBlock`` with
``affine_clamping=1.9``, ``global_affine_type='SOFTPLUS'``, ``permute_soft=True`` (a random
rotation per block; drawn here by :func:`random_rotation`, same distribution, much faster); internal
network ``Linear(d, 2d) -> ReLU -> Linear(2d, out)``; condition = 2-D sin/cos encoding of
dimension 128; loss ``-logsigmoid(log_prob / C)`` with ``log_prob = C ln(1/sqrt(2 pi)) -
0.5 sum z^2 + log_det``; fibers shuffled (randperm) into batches of 256; one Adam over all
flows; cosine learning rate with a 2-epoch warm-up from lr/10 and eta_min = lr * 1e-3.

Scoring (Alg. 2): per map, the per-dimension log-likelihood ``l = log_p / C`` is shifted by a
reference maximum ``u_i`` (the training-set maximum in CLS-CNFs, Eq. 4; the test-set maximum in
CFlow-AD), exponentiated (Eq. 5), upsampled bilinearly (align_corners=True, Eq. 6) and summed
over maps (Eq. 7); the anomaly map is ``n_max - N`` (Eq. 8, sign as in the original code:
``map.max() - map``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from nfbench.methods.base import descent_step

#: ln(1/sqrt(2*pi)), the per-dimension log-density constant of a standard normal.
LOG_NORMAL_CONST = -0.5 * math.log(2.0 * math.pi)


# ------------------------------------------------------------------------------------------
# positional encoding and fibers
# ------------------------------------------------------------------------------------------

def positional_encoding_2d(dim: int, height: int, width: int) -> Tensor:
    """The 2-D sinusoidal position encoding ``P [dim, height, width]`` (Vaswani et al. 2017,
    used by CFlow-AD and CLS-CNFs with ``dim = 128``).

    The first ``dim/2`` channels encode the column ``x``, the last ``dim/2`` the row ``y``; in
    each half, channel pairs ``(2j, 2j+1)`` hold ``sin(p * f_j)`` and ``cos(p * f_j)`` with
    frequencies ``f_j = 10000^(-2j / (dim/2))``. ``dim`` must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"positional encoding dimension must be a multiple of 4, got {dim}")
    half = dim // 2
    freqs = torch.exp(torch.arange(0, half, 2, dtype=torch.float64) * (-math.log(1e4) / half))
    xs = torch.arange(width, dtype=torch.float64)[:, None] * freqs  # [W, half/2]
    ys = torch.arange(height, dtype=torch.float64)[:, None] * freqs  # [H, half/2]
    enc = torch.zeros(dim, height, width, dtype=torch.float64)
    enc[0:half:2] = torch.sin(xs).T[:, None, :].expand(-1, height, -1)
    enc[1:half:2] = torch.cos(xs).T[:, None, :].expand(-1, height, -1)
    enc[half::2] = torch.sin(ys).T[:, :, None].expand(-1, -1, width)
    enc[half + 1::2] = torch.cos(ys).T[:, :, None].expand(-1, -1, width)
    return enc.float()


def fibers(feature_map: Tensor, encoding: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten ``feature_map [B, C, h, w]`` and ``encoding [D, h, w]`` into fibers
    ``[B*h*w, C]`` and their conditions ``[B*h*w, D]`` (row-major over b, y, x)."""
    b, c, h, w = feature_map.shape
    y = feature_map.permute(0, 2, 3, 1).reshape(b * h * w, c)
    cond = encoding.to(feature_map).permute(1, 2, 0).reshape(1, h * w, -1).expand(b, -1, -1)
    return y, cond.reshape(b * h * w, -1)


# ------------------------------------------------------------------------------------------
# the conditional flow
# ------------------------------------------------------------------------------------------

def subnet_fc(dims_in: int, dims_out: int) -> nn.Module:
    """Internal network of a coupling block: ``Linear(d, 2d) -> ReLU -> Linear(2d, out)``
    (CFlow-AD / AD-CLSCNFs ``subnet_fc``)."""
    return nn.Sequential(nn.Linear(dims_in, 2 * dims_in), nn.ReLU(), nn.Linear(2 * dims_in, dims_out))


def random_rotation(dim: int, rng: np.random.RandomState) -> np.ndarray:
    """A Haar-random rotation of SO(dim): QR of a Gaussian matrix with the signs of R's diagonal
    moved into Q, and one column flipped if needed so that det = +1 (Mezzadri 2007). This is the
    distribution of scipy's ``special_ortho_group``, which FrEIA's ``permute_soft`` calls, drawn
    with one QR (torch's LAPACK: ~1 s for 2048 channels) instead of dim-1 Householder steps in
    Python (minutes)."""
    gaussian = torch.from_numpy(rng.standard_normal((dim, dim)))
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r))[None, :]
    if torch.linalg.slogdet(q).sign < 0:
        q[:, 0] = -q[:, 0]
    return q.numpy()


def build_conditional_flow(channels: int, n_blocks: int, cond_dim: int = 128, clamp: float = 1.9,
                           permute_soft: bool = True, seed: int = 0,
                           draw_permutations: bool = True) -> nn.Module:
    """A FrEIA ``SequenceINN`` of ``n_blocks`` conditional ``AllInOneBlock`` s on ``channels``-dim
    vectors, each conditioned on a ``cond_dim`` vector (condition index 0).

    Every block's fixed channel mixing (``w_perm``, a random rotation when ``permute_soft``, else
    a random permutation) and its initial weights are drawn from ``seed``: building a flow
    neither depends on nor changes the caller's random state. ``draw_permutations=False``
    skips drawing rotations, for a flow whose state is loaded next (``w_perm`` is part of the
    state dict).
    """
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    state = np.random.get_state()
    np.random.seed(seed % 2**32)  # AllInOneBlock draws hard permutations from numpy's global RNG
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            flow = Ff.SequenceINN(channels)
            for _ in range(n_blocks):
                flow.append(Fm.AllInOneBlock, cond=0, cond_shape=(cond_dim,),
                            subnet_constructor=subnet_fc, affine_clamping=clamp,
                            global_affine_type="SOFTPLUS", permute_soft=False)
    finally:
        np.random.set_state(state)
    if permute_soft and draw_permutations:
        rng = np.random.RandomState((seed + 7919) % 2**32)
        for block in flow.module_list:
            w = torch.from_numpy(random_rotation(channels, rng)).float()
            block.w_perm.data.copy_(w)
            block.w_perm_inv.data.copy_(w.T)
    return flow


def log_likelihood(z: Tensor, log_jac: Tensor) -> Tensor:
    """``log p(y) = C ln(1/sqrt(2 pi)) - ||z||^2 / 2 + log|det dz/dy|`` per fiber (Eq. 3)."""
    channels = z.shape[1]
    return channels * LOG_NORMAL_CONST - 0.5 * z.pow(2).sum(dim=1) + log_jac


def nf_loss(log_p: Tensor, channels: int) -> Tensor:
    """``mean(-log sigmoid(log p / C))`` (Eq. 2 with the original code's division by C)."""
    return -F.logsigmoid(log_p / channels).mean()


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CNFSettings:
    """Everything that determines how the conditional flows are built and trained."""

    n_blocks: int = 8
    cond_dim: int = 128
    clamp: float = 1.9
    permute_soft: bool = True
    fiber_batch: int = 256
    lr: float = 2e-4
    meta_epochs: int = 25
    sub_epochs: int = 8
    warm_epochs: int = 2
    lr_min_factor: float = 1e-3
    batch_size: int = 32
    fiber_fraction: float = 1.0
    schedule_meta_epochs: int = 25


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


def build_flows(channels: Sequence[int], settings: CNFSettings, seed: int,
                draw_permutations: bool = True) -> nn.ModuleList:
    """One conditional flow per feature map; flow ``i`` is built with seed ``seed + i``."""
    return nn.ModuleList(build_conditional_flow(c, settings.n_blocks, settings.cond_dim,
                                                settings.clamp, settings.permute_soft, seed + i,
                                                draw_permutations)
                         for i, c in enumerate(channels))


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
    original tested (nfbench.protocols).
    """
    n = features[0].shape[0]
    encodings = [positional_encoding_2d(settings.cond_dim, f.shape[2], f.shape[3]).to(device)
                 for f in features]
    optimizer = torch.optim.Adam(flows.parameters(), lr=settings.lr)
    n_batches = math.ceil(n / settings.batch_size)
    total_steps = settings.sub_epochs * n_batches
    history = []
    flows.train()
    bar = tqdm(range(settings.meta_epochs), desc=desc, leave=False, disable=not progress)
    for meta in bar:
        losses = []
        for sub in range(settings.sub_epochs):
            order = torch.randperm(n, generator=generator)
            for b in range(n_batches):
                step = sub * n_batches + b
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(settings, meta, step / total_steps)
                index = order[b * settings.batch_size:(b + 1) * settings.batch_size]
                for layer, (flow, fmap) in enumerate(zip(flows, features)):
                    y, cond = fibers(fmap[index].to(device), encodings[layer])
                    perm = torch.randperm(y.shape[0], generator=generator)
                    if settings.fiber_fraction < 1.0:
                        keep = max(1, int(round(y.shape[0] * settings.fiber_fraction)))
                        perm = perm[:keep]
                    for start in range(0, perm.numel(), settings.fiber_batch):
                        idx = perm[start:start + settings.fiber_batch].to(device)
                        z, log_jac = flow(y[idx], c=[cond[idx]])
                        loss = nf_loss(log_likelihood(z, log_jac), y.shape[1])
                        losses.append(descent_step(
                            optimizer, loss, "CNF",
                            lambda: f"meta-epoch {meta + 1}, sub-epoch {sub + 1}, "
                                    f"batch {b + 1}, map {layer}"))
        history.append(float(np.mean(losses)) if losses else float("nan"))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        if on_meta_epoch is not None:
            on_meta_epoch(meta + 1)
    flows.eval()
    return history


# ------------------------------------------------------------------------------------------
# scoring
# ------------------------------------------------------------------------------------------

@torch.no_grad()
def log_likelihood_maps(flows: nn.ModuleList, features: Sequence[Tensor], cond_dim: int,
                        device: torch.device, chunk: int = 16384) -> list[Tensor]:
    """Per map, ``log p(y) / C_i`` at every position: ``[N, h_i, w_i]`` (CPU, float64)."""
    out = []
    for flow, fmap in zip(flows, features):
        n, c, h, w = fmap.shape
        encoding = positional_encoding_2d(cond_dim, h, w).to(device)
        values = []
        for start in range(0, n, max(1, chunk // (h * w))):
            y, cond = fibers(fmap[start:start + max(1, chunk // (h * w))].to(device), encoding)
            z, log_jac = flow(y, c=[cond])
            values.append((log_likelihood(z, log_jac) / c).double().cpu())
        out.append(torch.cat(values).reshape(n, h, w))
    return out


def layer_maxima(log_maps: Sequence[Tensor]) -> list[float]:
    """``u_i = max_{j,k} l_{i,k}^{(j)}`` per map (Eq. 4, over whatever images are given)."""
    return [float(m.max()) for m in log_maps]


def normal_score_map(log_maps: Sequence[Tensor], maxima: Sequence[float], size: int) -> Tensor:
    """``N = sum_i upsample(exp(l_i - u_i))`` at ``size x size`` (Eq. 5-7; bilinear,
    align_corners=True as in the original code). Returns ``[N, size, size]`` float64."""
    total = None
    for log_map, u in zip(log_maps, maxima):
        prob = torch.exp(log_map - u)[:, None]
        up = F.interpolate(prob, size=(size, size), mode="bilinear", align_corners=True)[:, 0]
        total = up if total is None else total + up
    return total


def anomaly_from_normal(normal: Tensor, n_max: float) -> Tensor:
    """``A_nf = n_max - N`` (Eq. 8 with the original code's sign: higher = more anomalous)."""
    return n_max - normal

