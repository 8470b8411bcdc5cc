"""Conditional normalizing flows on feature fibers (CFlow-AD, Gudovskiy et al., WACV 2022), the
density model shared by ``cflow`` and ``clscnf`` (CLS-CNFs §III-B3, Eq. 2-3).

A *fiber* is the feature vector ``y_i^k`` (``C_i`` channels) of feature map ``i`` at position
``k``. One conditional flow per feature map maps fibers to Gaussian latents; every coupling
block also sees a 2-D sinusoidal positional encoding of the fiber's position::

    pe = positional_encoding_2d(128, h, w)                  # [128, h, w]
    flow = build_conditional_flow(C, n_blocks=8, cond_dim=128, clamp=1.9, seed=0)
    y, c = fibers(feature_map, pe)                           # [B*h*w, C], [B*h*w, 128]
    z, log_jac = flow(y, c=[c])                              # FrEIA SequenceINN
    log_p = log_likelihood(z, log_jac)                       # Eq. 3 (nats per fiber)
    loss = nf_loss(log_p, C)                                 # -log sigmoid(log p / C), Eq. 2

Facts from the original code (docs/original-code.md §1b, §1c): FrEIA ``AllInOneBlock`` with
``affine_clamping=1.9``, ``global_affine_type='SOFTPLUS'``, ``permute_soft=True`` (a random
rotation per block; drawn here by :func:`random_rotation`, same distribution, much faster); internal
network ``Linear(d, 2d) -> ReLU -> Linear(2d, out)``; condition = 2-D sin/cos encoding of
dimension 128; loss ``-logsigmoid(log_prob / C)`` with ``log_prob = C ln(1/sqrt(2 pi)) -
0.5 sum z^2 + log_det``. Training: :mod:`.training`; scoring (Alg. 2): :mod:`.scoring`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfbench.precision import autocast_subnets

if TYPE_CHECKING:
    from nfbench.methods.cnf.config import CNFSettings

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


def build_flows(channels: Sequence[int], settings: "CNFSettings", seed: int,
                draw_permutations: bool = True) -> nn.ModuleList:
    """One conditional flow per feature map; flow ``i`` is built with seed ``seed + i``."""
    flows = nn.ModuleList(build_conditional_flow(c, settings.n_blocks, settings.condition_dim,
                                                 settings.clamp, settings.permute_soft, seed + i,
                                                 draw_permutations)
                          for i, c in enumerate(channels))
    return autocast_subnets(flows, settings.precision)  # bf16: the subnets only
