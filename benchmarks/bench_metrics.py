"""Time :func:`nfbench.metrics.compute_all` against one ``numpy.argsort`` of the same pixels.

Usage: ``python benchmarks/bench_metrics.py [--images 83] [--size 768] [--repeats 3]``

Both are timed side by side in one process, interleaved (argsort, compute_all, argsort, ...),
and the medians are compared, so the ratio holds on a loaded machine. The target (issue 19
§2) is compute_all within 1.5x one argsort at 768 px on 83 test images. A speed target lives
here, not in a timed unit test; tests/test_metrics.py checks the values.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from nfbench import metrics


def synthetic_test_set(images: int, size: int, seed: int = 0):
    """``images`` maps ``size`` x ``size`` (float32, smooth plus noise, so some ties) and
    masks with a few rectangular defects in 60 % of the images."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((images, size, size), dtype=bool)
    labels = np.zeros(images, dtype=int)
    for i in range(images):
        if rng.random() < 0.6:
            labels[i] = 1
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(0, size - size // 8, size=2)
                h, w = rng.integers(size // 64, size // 8, size=2)
                masks[i, y:y + h, x:x + w] = True
    maps = rng.random(masks.shape, dtype=np.float32)
    maps += masks.astype(np.float32)
    image_scores = maps.reshape(images, -1).max(axis=1).astype(np.float64)
    return labels, image_scores, masks, maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=83)
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    labels, image_scores, masks, maps = synthetic_test_set(args.images, args.size)
    argsort_s, compute_s = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        np.argsort(maps.ravel())
        argsort_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        metrics.compute_all(labels, image_scores, masks, maps)
        compute_s.append(time.perf_counter() - start)
    a, c = statistics.median(argsort_s), statistics.median(compute_s)
    print(f"{args.images} images at {args.size} px ({maps.size / 1e6:.1f} M pixels), "
          f"{args.repeats} interleaved repeats, medians:")
    print(f"  numpy.argsort  {a:8.2f} s")
    print(f"  compute_all    {c:8.2f} s")
    print(f"  ratio          {c / a:8.2f}x  (target <= 1.5x)")


if __name__ == "__main__":
    main()
