"""The cross-scale flow of CS-Flow (Rudolph et al., WACV 2022, §3.1-3.3, Eq. 1-6, Fig. 3-4).

A chain of ``n_blocks`` blocks, each a fixed random channel permutation per scale
(:class:`ParallelPermute`) followed by an affine coupling over all scales jointly
(:class:`CrossScaleCoupling`) whose internal networks (:class:`CrossConvolutions`, Fig. 4) mix
the scales through bilinear upsampling and strided convolutions. Built as a FrEIA 0.2
``GraphINN``::

    flow = build_cs_flow([(304, 24, 24), (304, 12, 12), (304, 6, 6)])
    z, log_jac = flow([y0, y1, y2])      # z: tuple of tensors shaped like the inputs, log_jac [B]
    y, neg_log_jac = flow(z, rev=True)   # exact inverse, log_jac of the inverse = -log_jac

Scales are ordered from the finest (largest map, index 0) to the coarsest, as in the original
code; each coarser map must be at most as large as the finer one.

Where the paper and the original code (marco-rudolph/cs-flow, ``freia_funcs.py``) leave a
choice, the choice made here is noted at the place it is made:

* soft clamping uses ``2/pi`` exactly (paper Eq. 4), not the original's rounded ``0.636``;
* outputs are clamped to ±1e6 as in the original (identity for every finite value met in
  practice, so invertibility is unaffected);
* permutations come from a local ``numpy.random.RandomState(seed)``, which gives the same
  permutations as the original's ``np.random.seed(k); np.random.permutation(C)`` without
  touching numpy's global state;
* the original's reverse pass takes ``t`` from the wrong tensor (``r01`` instead of ``r02``);
  it is never used there. The reverse pass here is the exact inverse.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch
from FrEIA.framework import GraphINN, InputNode, Node, OutputNode
from FrEIA.modules import InvertibleModule
from torch import Tensor, nn

from nfbench.precision import resize_bilinear

#: Soft-clamp factor of Eq. 4, sigma_a(h) = (2a/pi) atan(h/a). The original code rounds 2/pi to
#: 0.636, which bounds log-scales to ±2.997 instead of ±3 for a = 3; we follow the paper. The
#: difference (0.1 %) is far below anything the benchmark can resolve.
SOFT_CLAMP_FACTOR = 2.0 / math.pi

#: The original clamps every coupling output to ±1e6 (a guard against overflow). It is the
#: identity on |y| <= 1e6, so it breaks neither invertibility nor the log-determinant for any
#: value a trained flow produces; we keep it for fidelity.
OUTPUT_CLAMP = 1e6

#: Negative slope of the LeakyReLU in the internal networks (§4.2).
LEAKY_SLOPE = 0.1


def _as_list(x: Tensor | Iterable[Tensor]) -> list[Tensor]:
    return [x] if torch.is_tensor(x) else list(x)


class ParallelPermute(InvertibleModule):
    """A fixed random channel permutation for each of the n input scales (Fig. 3, first step).

    The permutations are drawn in scale order from ``numpy.random.RandomState(seed)``; the
    original seeds numpy's global generator with the block index and draws from it, which
    yields exactly the same permutations. log-det is 0.
    """

    def __init__(self, dims_in, dims_c=None, seed: int = 0):
        super().__init__(dims_in, dims_c)
        rng = np.random.RandomState(seed)
        self.n_inputs = len(dims_in)
        for i, dims in enumerate(dims_in):
            perm = rng.permutation(dims[0])
            perm_inv = np.argsort(perm)
            self.register_buffer(f"perm_{i}", torch.as_tensor(perm, dtype=torch.long))
            self.register_buffer(f"perm_inv_{i}", torch.as_tensor(perm_inv, dtype=torch.long))

    def permutation(self, i: int, inverse: bool = False) -> Tensor:
        return getattr(self, f"perm_inv_{i}" if inverse else f"perm_{i}")

    def forward(self, x_or_z, c=None, rev=False, jac=True):
        x = _as_list(x_or_z)
        out = tuple(t[:, self.permutation(i, inverse=rev)] for i, t in enumerate(x))
        return out, torch.zeros(x[0].shape[0], dtype=x[0].dtype, device=x[0].device)

    def output_dims(self, input_dims):
        return list(input_dims)


class CrossConvolutions(nn.Module):
    """Internal network r of a coupling block (Fig. 4), for any number of scales.

    Per scale i: ``h_i = LeakyReLU(conv_k(x_i))`` (in -> hidden), then
    ``out_i = conv_k(h_i) + down(h_{i-1}) + up(h_{i+1})`` (hidden -> out), where ``down`` is a
    stride-2 k x k conv of the finer scale's hidden map and ``up`` is a bilinear upsampling
    (align_corners=False) of the coarser scale's hidden map to the size of scale i followed by a
    k x k conv. All convs use zero padding k//2 and bias. Each output is multiplied by its own
    learnable scalar ``gamma[i]``, initialised to 0, so the coupling starts as the identity.

    The stride-2 conv gives ceil(H/2) x ceil(W/2); if the coarser map has another size (e.g. a
    7x7 map next to a 3x3 one) the downsampled map is resized bilinearly to it. This never
    happens for the paper's 24/12/6 maps.
    """

    def __init__(self, in_channels: int, out_channels: int, n_scales: int, hidden: int = 1024,
                 kernel_size: int = 3, use_gamma: bool = True):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to preserve map sizes, got {kernel_size}")
        if n_scales < 1:
            raise ValueError(f"n_scales must be >= 1, got {n_scales}")
        pad = kernel_size // 2

        def conv(cin, cout, stride=1):
            return nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=pad, bias=True)

        self.n_scales = n_scales
        self.use_gamma = use_gamma
        self.conv_in = nn.ModuleList(conv(in_channels, hidden) for _ in range(n_scales))
        self.conv_out = nn.ModuleList(conv(hidden, out_channels) for _ in range(n_scales))
        # up[i]: hidden map of scale i+1 -> scale i; down[i]: hidden map of scale i -> scale i+1.
        self.up = nn.ModuleList(conv(hidden, out_channels) for _ in range(n_scales - 1))
        self.down = nn.ModuleList(conv(hidden, out_channels, stride=2) for _ in range(n_scales - 1))
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        self.gamma = nn.Parameter(torch.zeros(n_scales))

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        if len(xs) != self.n_scales:
            raise ValueError(f"expected {self.n_scales} scales, got {len(xs)}")
        hidden = [self.act(conv(x)) for conv, x in zip(self.conv_in, xs)]
        outs = [conv(h) for conv, h in zip(self.conv_out, hidden)]
        for i in range(self.n_scales - 1):
            fine, coarse = hidden[i], hidden[i + 1]
            up = resize_bilinear(coarse, fine.shape[-2:])  # = F.interpolate bilinear
            outs[i] = outs[i] + self.up[i](up)
            down = self.down[i](fine)
            if down.shape[-2:] != coarse.shape[-2:]:
                down = resize_bilinear(down, coarse.shape[-2:])
            outs[i + 1] = outs[i + 1] + down
        if self.use_gamma:
            outs = [out * self.gamma[i] for i, out in enumerate(outs)]
        return outs


class CrossScaleCoupling(InvertibleModule):
    """Affine coupling over all scales jointly (Eq. 3, Fig. 3).

    Every scale's channels are split into ``c1 = C//2`` and ``c2 = C - c1``. First ``s2`` (a
    :class:`CrossConvolutions` c2 -> 2*c1) on the second halves of all scales regresses (s, t)
    for the first halves, ``y1 = x1 * e(s) + t``; then ``s1`` (c1 -> 2*c2) on the new first
    halves regresses (s, t) for the second halves. ``e(s) = exp(sigma_clamp(s))`` with the soft
    clamp of Eq. 4. log-det per sample = sum over scales, channels and positions of sigma(s).
    """

    def __init__(self, dims_in, dims_c=None, hidden: int = 1024, kernel_size: int = 3,
                 clamp: float = 3.0, use_gamma: bool = True):
        super().__init__(dims_in, dims_c)
        channels = {d[0] for d in dims_in}
        if len(channels) != 1:
            raise ValueError(f"all scales must have the same channel count, got {dims_in}")
        n_channels = channels.pop()
        if n_channels < 2:
            raise ValueError(f"need at least 2 channels to split, got {n_channels}")
        self.split1 = n_channels // 2
        self.split2 = n_channels - self.split1
        self.clamp = float(clamp)
        n = len(dims_in)
        self.s1 = CrossConvolutions(self.split1, 2 * self.split2, n, hidden, kernel_size, use_gamma)
        self.s2 = CrossConvolutions(self.split2, 2 * self.split1, n, hidden, kernel_size, use_gamma)

    def log_e(self, s: Tensor) -> Tensor:
        """log of the scale factor: the soft clamp of Eq. 4 (no clamping if clamp <= 0)."""
        if self.clamp > 0:
            return self.clamp * SOFT_CLAMP_FACTOR * torch.atan(s / self.clamp)
        return s

    @staticmethod
    def _split_st(rs: list[Tensor], n: int) -> tuple[list[Tensor], list[Tensor]]:
        return [r[:, :n] for r in rs], [r[:, n:] for r in rs]

    def forward(self, x_or_z, c=None, rev=False, jac=True):
        x = _as_list(x_or_z)
        a = [t[:, :self.split1] for t in x]
        b = [t[:, self.split1:] for t in x]
        log_jac = torch.zeros(x[0].shape[0], dtype=x[0].dtype, device=x[0].device)
        if not rev:
            s, t = self._split_st(self.s2(b), self.split1)
            log_s = [self.log_e(si) for si in s]
            a = [ai * torch.exp(ls) + ti for ai, ls, ti in zip(a, log_s, t)]
            log_jac = log_jac + sum(ls.sum(dim=(1, 2, 3)) for ls in log_s)
            s, t = self._split_st(self.s1(a), self.split2)
            log_s = [self.log_e(si) for si in s]
            b = [bi * torch.exp(ls) + ti for bi, ls, ti in zip(b, log_s, t)]
            log_jac = log_jac + sum(ls.sum(dim=(1, 2, 3)) for ls in log_s)
        else:
            s, t = self._split_st(self.s1(a), self.split2)
            log_s = [self.log_e(si) for si in s]
            b = [(bi - ti) * torch.exp(-ls) for bi, ls, ti in zip(b, log_s, t)]
            log_jac = log_jac - sum(ls.sum(dim=(1, 2, 3)) for ls in log_s)
            s, t = self._split_st(self.s2(b), self.split1)
            log_s = [self.log_e(si) for si in s]
            a = [(ai - ti) * torch.exp(-ls) for ai, ls, ti in zip(a, log_s, t)]
            log_jac = log_jac - sum(ls.sum(dim=(1, 2, 3)) for ls in log_s)
        out = tuple(torch.cat((ai, bi), dim=1).clamp(-OUTPUT_CLAMP, OUTPUT_CLAMP)
                    for ai, bi in zip(a, b))
        return out, log_jac

    def output_dims(self, input_dims):
        return list(input_dims)


def default_kernel_sizes(n_blocks: int) -> tuple[int, ...]:
    """The original's kernel sizes for ``n_blocks`` coupling blocks (cs-flow config.py
    ``kernel_sizes = [3] * (n_coupling_blocks - 1) + [5]``): 3x3 convs, the last block 5x5."""
    return (3,) * (int(n_blocks) - 1) + (5,)


def build_cs_flow(input_shapes: Sequence[tuple[int, int, int]], n_blocks: int = 4,
                  hidden: int = 1024, kernel_sizes: Sequence[int] | None = None,
                  clamp: float = 3.0, use_gamma: bool = True, seed: int = 0) -> GraphINN:
    """The cross-scale flow: ``n_blocks`` x (ParallelPermute(seed+k) -> CrossScaleCoupling).

    ``input_shapes`` are the (C, H, W) of the feature maps, finest first. Block k uses
    ``kernel_sizes[k]``; None means the original rule (cs-flow config.py)
    ``[3] * (n_blocks - 1) + [5]`` (= (3, 3, 3, 5) for 4 blocks, and the kernels of the
    Table 4 ablation); an explicit sequence must have ``n_blocks`` entries.
    The permutation of block k is seeded with ``seed + k`` (the original: k).

    Returns a FrEIA ``GraphINN``: ``z, log_jac = flow(list_of_maps)`` with ``z`` a tuple of
    tensors of the input shapes and ``log_jac`` of shape [B]; ``flow(z, rev=True)`` inverts.
    """
    shapes = [tuple(int(v) for v in s) for s in input_shapes]
    if not shapes:
        raise ValueError("input_shapes must not be empty")
    if any(len(s) != 3 for s in shapes):
        raise ValueError(f"input_shapes must be (C, H, W) tuples, got {shapes}")
    for fine, coarse in zip(shapes, shapes[1:]):
        if coarse[1] > fine[1] or coarse[2] > fine[2]:
            raise ValueError(f"scales must go from finest to coarsest, got {shapes}")
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
    kernel_sizes = list(default_kernel_sizes(n_blocks) if kernel_sizes is None else kernel_sizes)
    if len(kernel_sizes) != n_blocks:
        raise ValueError(f"kernel_sizes needs one entry per block ({n_blocks}), got "
                         f"{tuple(kernel_sizes)}")

    inputs = [InputNode(*s, name=f"input_{i}") for i, s in enumerate(shapes)]
    nodes: list = list(inputs)
    previous = [(node, 0) for node in inputs]
    for k in range(n_blocks):
        perm = Node(previous, ParallelPermute, {"seed": seed + k}, name=f"permute_{k}")
        coupling = Node([(perm, i) for i in range(len(shapes))], CrossScaleCoupling,
                        {"hidden": hidden, "kernel_size": kernel_sizes[k], "clamp": clamp,
                         "use_gamma": use_gamma}, name=f"coupling_{k}")
        nodes += [perm, coupling]
        previous = [(coupling, i) for i in range(len(shapes))]
    nodes += [OutputNode([out], name=f"output_{i}") for i, out in enumerate(previous)]
    return GraphINN(nodes, force_tuple_output=True)


def _flat(z: Tensor | Iterable[Tensor]) -> Tensor:
    return torch.cat([t.flatten(1) for t in _as_list(z)], dim=1)


#: How the loss weighs the log-determinant: per sample (original get_loss) or summed over the
#: batch before the batch mean (anomalib's ParallelGlowCouplingLayer returns a scalar).
LOG_JAC_REDUCTIONS = ("sample", "batch_sum")


def nll_loss(z: Tensor | Iterable[Tensor], log_jac: Tensor, log_jac_reduction: str = "sample"
             ) -> Tensor:
    """Eq. 6 per latent dimension, as the original utils.get_loss:
    ``mean_b(0.5 * sum z^2 - log_jac) / D``, D = latent entries per sample (all scales).

    ``log_jac_reduction="batch_sum"`` is anomalib 2.7's loss (CsFlowLoss on the scalar
    ``sum_b log_jac`` its couplings return): ``mean_b(0.5 * sum z^2 - sum_b log_jac) / D``,
    i.e. the log-determinant term weighted by the batch size B."""
    if log_jac_reduction not in LOG_JAC_REDUCTIONS:
        raise ValueError(f"log_jac_reduction must be one of {', '.join(LOG_JAC_REDUCTIONS)}, "
                         f"got {log_jac_reduction!r}")
    flat = _flat(z)
    if log_jac_reduction == "batch_sum":
        log_jac = log_jac.sum()
    return torch.mean(0.5 * flat.pow(2).sum(dim=1) - log_jac) / flat.shape[1]


def image_score(z: Tensor | Iterable[Tensor]) -> Tensor:
    """Image anomaly score [B]: mean of z^2/2 over every latent entry of all scales
    (original train.py; the paper's Eq. 2 ranks by p_Z(z), the same order)."""
    return _flat(z).pow(2).mean(dim=1) / 2


def localization_map(z: Tensor | Iterable[Tensor]) -> Tensor:
    """Anomaly map [B, H0, W0]: sum over channels of z^2 of the largest (first) scale, the
    wording of §3.3 / Fig. 7. The original evaluate.py takes the mean over channels instead: a
    constant factor C, so maps, rankings and AUROCs are the same up to that scale."""
    return _as_list(z)[0].pow(2).sum(dim=1)
