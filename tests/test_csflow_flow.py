"""The CS-Flow flow core: invertibility, exact log-determinant, identity at init, helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nfbench.methods.csflow.flow import (
    CrossConvolutions,
    CrossScaleCoupling,
    ParallelPermute,
    build_cs_flow,
    image_score,
    localization_map,
    nll_loss,
)

SHAPES = {
    1: [(8, 8, 8)],
    2: [(8, 8, 8), (8, 4, 4)],
    3: [(8, 8, 8), (8, 4, 4), (8, 2, 2)],
}


def _inputs(shapes, batch=2, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *s, generator=g, dtype=dtype) for s in shapes]


def _randomize_gammas(flow, seed=0, low=0.5, high=1.0):
    """Non-zero gammas (random sign), otherwise every coupling is the identity."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for module in flow.modules():
            if isinstance(module, CrossConvolutions):
                mag = low + (high - low) * torch.rand(module.gamma.shape, generator=g)
                sign = torch.where(torch.rand(module.gamma.shape, generator=g) < 0.5, -1.0, 1.0)
                module.gamma.copy_(mag * sign)
                n += 1
    assert n > 0


def _modules(flow, cls):
    return [node.module for node in flow.node_list if isinstance(node.module, cls)]


@pytest.mark.parametrize("n_scales", [1, 2, 3])
def test_invertible(n_scales):
    torch.manual_seed(0)
    shapes = SHAPES[n_scales]
    flow = build_cs_flow(shapes, n_blocks=2, hidden=16).eval()
    _randomize_gammas(flow)
    x = _inputs(shapes)
    with torch.no_grad():
        z, log_jac = flow(x)
        x_rec, log_jac_rev = flow(z, rev=True)
    assert isinstance(z, tuple) and len(z) == n_scales
    assert [t.shape for t in z] == [t.shape for t in x]
    assert log_jac.shape == (2,)
    # the flow really transforms (otherwise the reconstruction check would be vacuous)
    assert max((a - b).abs().max().item() for a, b in zip(z, x)) > 1e-2
    assert log_jac.abs().min() > 1e-3
    for a, b in zip(x_rec, x):
        assert ((a - b).norm() / b.norm()).item() < 1e-4
    assert torch.allclose(log_jac_rev, -log_jac, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shapes", [
    [(4, 3, 3)],
    [(4, 4, 4), (4, 2, 2)],
    [(2, 8, 8), (2, 4, 4), (2, 2, 2)],
])
def test_log_det_matches_numerical_jacobian(shapes):
    torch.manual_seed(1)
    flow = build_cs_flow(shapes, n_blocks=2, hidden=8, kernel_sizes=(3, 5)).double().eval()
    _randomize_gammas(flow, seed=1)
    x = _inputs(shapes, batch=1, dtype=torch.float64, seed=1)
    sizes = [t.numel() for t in x]

    def f(flat):
        parts = torch.split(flat, sizes)
        z, _ = flow([p.reshape(1, *s) for p, s in zip(parts, shapes)])
        return torch.cat([t.flatten() for t in z])

    flat = torch.cat([t.flatten() for t in x])
    jac = torch.autograd.functional.jacobian(f, flat, vectorize=True)
    sign, logabsdet = torch.linalg.slogdet(jac)
    _, log_jac = flow(x)
    assert sign.item() != 0
    assert abs(log_jac.item()) > 1e-2  # non-trivial
    assert abs(log_jac.item() - logabsdet.item()) < 1e-6


def test_identity_at_initialisation():
    shapes = SHAPES[3]
    flow = build_cs_flow(shapes, n_blocks=3, hidden=16)
    for module in flow.modules():
        if isinstance(module, CrossConvolutions):
            assert torch.count_nonzero(module.gamma) == 0
            assert module.gamma.shape == (3,)
    x = _inputs(shapes)
    z, log_jac = flow(x)
    expected = list(x)
    for perm in _modules(flow, ParallelPermute):
        expected = [t[:, perm.permutation(i)] for i, t in enumerate(expected)]
    for a, b, orig in zip(z, expected, x):
        assert torch.equal(a, b)
        assert not torch.equal(a, orig)  # channels really are permuted
    assert torch.equal(log_jac, torch.zeros(2))


def test_permutations_match_original_seeding():
    """Block k draws its per-scale permutations like the original's np.random.seed(k)."""
    flow = build_cs_flow([(6, 4, 4), (6, 2, 2)], n_blocks=3, hidden=4, seed=0)
    perms = _modules(flow, ParallelPermute)
    assert len(perms) == 3
    state = np.random.get_state()
    try:
        for k, module in enumerate(perms):
            np.random.seed(k)
            for i in range(2):
                expected = np.random.permutation(6)
                assert module.permutation(i).tolist() == expected.tolist()
                inv = module.permutation(i, inverse=True)
                assert module.permutation(i)[inv].tolist() == list(range(6))
    finally:
        np.random.set_state(state)
    assert perms[0].permutation(0).tolist() != perms[1].permutation(0).tolist()


@pytest.mark.parametrize("n_blocks,expected", [
    (1, [5]), (2, [3, 5]), (3, [3, 3, 5]), (4, [3, 3, 3, 5]), (5, [3, 3, 3, 3, 5]),
    (6, [3, 3, 3, 3, 3, 5])])
def test_default_kernel_sizes_follow_the_original_rule(n_blocks, expected):
    """cs-flow config.py: [3] * (n_blocks - 1) + [5] (the old extension of (3, 3, 3, 5) by its
    last entry gave (3, 3) for 2 blocks and (3, 3, 3, 5, 5, 5) for 6)."""
    flow = build_cs_flow([(4, 4, 4), (4, 2, 2)], n_blocks=n_blocks, hidden=4)
    couplings = _modules(flow, CrossScaleCoupling)
    assert [c.s1.conv_in[0].kernel_size[0] for c in couplings] == expected
    assert [c.s2.down[0].kernel_size[0] for c in couplings] == expected


def test_explicit_kernel_sizes_need_one_per_block():
    flow = build_cs_flow([(4, 4, 4), (4, 2, 2)], n_blocks=2, hidden=4, kernel_sizes=(5, 3))
    assert [c.s1.conv_in[0].kernel_size[0] for c in _modules(flow, CrossScaleCoupling)] == [5, 3]
    with pytest.raises(ValueError, match="one entry per block"):
        build_cs_flow([(4, 4, 4), (4, 2, 2)], n_blocks=5, hidden=4, kernel_sizes=(3, 5))


@pytest.mark.parametrize("shapes", [
    [(6, 6, 6), (6, 3, 3)],
    [(5, 5, 5), (5, 3, 3), (5, 2, 2)],
    [(4, 7, 7), (4, 3, 3)],  # stride-2 conv gives 4x4: resized to the coarser map
])
def test_kernel5_and_odd_sizes(shapes):
    torch.manual_seed(2)
    flow = build_cs_flow(shapes, n_blocks=2, hidden=8, kernel_sizes=(5, 5)).eval()
    _randomize_gammas(flow, seed=2)
    x = _inputs(shapes, seed=2)
    with torch.no_grad():
        z, log_jac = flow(x)
        x_rec, _ = flow(z, rev=True)
    assert [t.shape for t in z] == [t.shape for t in x]
    assert torch.isfinite(log_jac).all() and log_jac.abs().min() > 1e-3
    for a, b in zip(x_rec, x):
        assert ((a - b).norm() / b.norm()).item() < 1e-4


def test_cross_convolutions_mix_scales():
    """Each output sees its own scale and its direct neighbours (Fig. 4), no others."""
    torch.manual_seed(3)
    net = CrossConvolutions(2, 4, n_scales=3, hidden=8).double()
    with torch.no_grad():
        net.gamma.fill_(1.0)
    x = [torch.randn(1, 2, s, s, dtype=torch.float64) for s in (8, 4, 2)]
    out = net(x)
    assert [o.shape for o in out] == [(1, 4, 8, 8), (1, 4, 4, 4), (1, 4, 2, 2)]
    x_coarse = [x[0], x[1], x[2] + 1.0]
    assert not torch.allclose(net(x_coarse)[1], out[1])  # up path 2 -> 1
    assert torch.allclose(net(x_coarse)[0], out[0])  # scale 2 is not a neighbour of scale 0
    x_fine = [x[0] + 1.0, x[1], x[2]]
    assert torch.allclose(net(x_fine)[2], out[2])  # scale 0 is not a neighbour of scale 2
    assert not torch.allclose(net(x_fine)[1], out[1])


def test_mismatched_inputs_rejected():
    with pytest.raises(ValueError):
        build_cs_flow([(4, 2, 2), (4, 4, 4)], hidden=4)  # coarse before fine
    with pytest.raises(ValueError):
        CrossScaleCoupling([(4, 4, 4), (6, 2, 2)], hidden=4)
    with pytest.raises(ValueError):
        CrossConvolutions(2, 4, n_scales=1, hidden=4, kernel_size=4)


def test_loss_and_scores():
    z = [torch.ones(3, 4, 4, 4), torch.ones(3, 4, 2, 2)]
    d = 4 * 16 + 4 * 4
    assert nll_loss(z, torch.zeros(3)).item() == pytest.approx(0.5)
    assert nll_loss(z, torch.full((3,), float(d))).item() == pytest.approx(-0.5)
    assert nll_loss(z, torch.tensor([0.0, 0.0, 3.0 * d])).item() == pytest.approx(-0.5)
    scores = image_score([2 * t for t in z])
    assert scores.shape == (3,)
    assert torch.allclose(scores, torch.full((3,), 2.0))
    z0 = torch.zeros(3, 4, 4, 4)
    z0[1, :, 2, 3] = 3.0
    maps = localization_map([z0, z[1]])
    assert maps.shape == (3, 4, 4)
    assert maps[1, 2, 3].item() == pytest.approx(4 * 9.0)
    assert maps.sum().item() == pytest.approx(4 * 9.0)
    # a single tensor is accepted as one scale
    assert localization_map(z0).shape == (3, 4, 4)


def test_loss_gradient_flows_to_subnets():
    shapes = SHAPES[2]
    flow = build_cs_flow(shapes, n_blocks=1, hidden=8)
    z, log_jac = flow(_inputs(shapes))
    nll_loss(z, log_jac).backward()
    coupling = _modules(flow, CrossScaleCoupling)[0]
    # with gamma = 0 the only gradient into the subnet is the one on gamma itself
    assert coupling.s1.gamma.grad is not None and coupling.s1.gamma.grad.abs().sum() > 0
    assert coupling.s2.gamma.grad.abs().sum() > 0
