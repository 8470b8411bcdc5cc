"""The profiling library: FLOP counters agree with a hand count, timing comes from
torch.utils.benchmark's blocked_autorange."""

from __future__ import annotations

import torch
from torch import nn

from nfbench.profiling import count_flops, measure_module, time_inference


class _ScoresAndMap(nn.Module):
    """images [B, 3, 8, 8] -> (scores [B], map [B, 8, 8]) through one 1x1 convolution."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, bias=False)

    def forward(self, images):
        maps = self.conv(images).pow(2).sum(1)
        return maps.flatten(1).amax(1), maps


def test_flop_counters_match_a_hand_count_on_a_tuple_output():
    flops = count_flops(_ScoresAndMap(), torch.rand(1, 3, 8, 8))
    macs = 3 * 4 * 8 * 8  # one multiply-add per input channel, output channel and pixel
    assert flops["gmacs_fvcore"] * 1e9 == macs
    assert flops["gflops_torch"] * 1e9 == 2 * macs


def test_timing_runs_blocked_autorange_for_at_least_min_run_time(one_thread):
    calls = []
    timing = time_inference(lambda: calls.append(1), warmup=2, min_run_time=0.05)
    assert timing["median_s"] > 0 and timing["repeats"] >= 1 and timing["min_s"] <= timing["median_s"]
    assert len(calls) > 2 + timing["repeats"]  # warm-up, then several calls per block
    result = measure_module(_ScoresAndMap(), 8, batch_size=2, device=torch.device("cpu"),
                            min_run_time=0.05)
    assert result["images_per_second"] > 0 and result["timing"]["device"] == "cpu"
