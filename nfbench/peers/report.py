"""The report section "Ours vs anomalib 2.7, same features" (Markdown lines).

Per category: our pipeline's number (the paper's variant named in ``deviations.yaml``),
anomalib as shipped, anomalib matched to the paper, their differences to ours, each as the
mean over the seeds found (n), and the ways anomalib deviates from the paper beside each
anomalib column (numbered; the legend lists them, from ``deviations.yaml``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nfbench.peers import CONFIGS, ENABLE_HINT, PEER_VERSION, deviations

METRICS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC"}


def _records(folder: Path) -> dict[str, list[dict]]:
    """``{category: [record, ...]}`` of the seed records below ``folder``."""
    out: dict[str, list[dict]] = {}
    for path in sorted(Path(folder).glob("*/seed*.json")):
        record = json.loads(path.read_text())
        record["_path"] = str(path)  # where its figure material (.npz) lies
        out.setdefault(path.parent.name, []).append(record)
    return out


def _image_scores(records: list[dict]) -> tuple[np.ndarray | None, dict[int, np.ndarray]]:
    """(test labels, ``{seed: image scores}``) from peer records' ``scores`` or our runs'
    figure material (``seed<k>.npz``: labels, image_scores); (None, {}) when absent or when
    the seeds disagree on the labels."""
    labels, scores = None, {}
    for i, r in enumerate(records):
        if r.get("status", "ok") != "ok":
            continue
        if r.get("scores"):
            lab, img = r["scores"]["labels"], r["scores"]["image"]
        else:
            npz = Path(r.get("_path", "")).with_suffix(".npz")
            if not r.get("_path") or not npz.is_file():
                continue
            with np.load(npz) as data:
                if "image_scores" not in data or "labels" not in data:
                    continue
                lab, img = data["labels"], data["image_scores"]
        lab = np.asarray(lab).astype(int)
        if labels is not None and not np.array_equal(labels, lab):
            return None, {}
        labels, scores[int(r.get("seed", i))] = lab, np.asarray(img, dtype=float)
    return labels, scores


def _boot(ours: list[dict], peer: list[dict]) -> np.ndarray | None:
    """Test-set bootstrap draws of the image-AUROC difference of one category (or None)."""
    lo, so = _image_scores(ours)
    lp, sp = _image_scores(peer)
    if lo is None or lp is None or not np.array_equal(lo, lp):
        return None
    return bootstrap_difference(lo, so, sp)


def _stat(records: list[dict], metric: str) -> tuple[float, float, int]:
    values = [r["metrics"][metric] for r in records  # an undefined metric is None in a record
              if r.get("status", "ok") == "ok" and r["metrics"].get(metric) is not None
              and np.isfinite(r["metrics"][metric])]
    if not values:
        return np.nan, np.nan, 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else np.nan, \
        len(values)


def _seed_means(records: dict[str, list[dict]], categories: list[str], metric: str
                ) -> dict[int, float]:
    """Per seed, the mean over ``categories`` (only seeds run on every category)."""
    per = [_per_seed(records.get(c, []), metric) for c in categories]
    common = set.intersection(*(set(p) for p in per)) if per else set()
    return {seed: float(np.mean([p[seed] for p in per])) for seed in sorted(common)}


def _cell(mean: float, std: float, n: int) -> str:
    if n == 0:
        return "—"
    spread = f" ± {std:.3f}" if np.isfinite(std) else ""
    return f"{mean:.3f}{spread} (n={n})"


def _diff(a: float, b: float) -> str:
    return f"{a - b:+.3f}" if np.isfinite(a) and np.isfinite(b) else "—"


DRAWS = 1000  # bootstrap draws of the test set (fixed seed: the report is deterministic)


def auroc_draws(labels: np.ndarray, scores: dict[int, np.ndarray], counts) -> np.ndarray:
    """Image AUROC of every bootstrap draw, per seed: ``{seed: [draws]}`` as one array
    ``[seeds, draws]``. ``counts = (ca [draws, n_anomalous], cn [draws, n_normal])`` are the
    draws' multiplicities of each anomalous / normal image (stratified resampling): the AUROC
    of a draw is ``ca @ M @ cn / (n_a n_n)`` with ``M[a, n] = 1[s_a > s_n] + 0.5 1[s_a = s_n]``
    (the Mann-Whitney form), exact and vectorised."""
    ca, cn = counts
    out = []
    for seed in sorted(scores):
        s = np.asarray(scores[seed], dtype=float)
        a, n = s[labels == 1], s[labels == 0]
        m = (a[:, None] > n[None, :]) + 0.5 * (a[:, None] == n[None, :])
        out.append(np.einsum("ba,an,bn->b", ca, m, cn) / (len(a) * len(n)))
    return np.array(out)


def bootstrap_difference(labels: np.ndarray, ours: dict[int, np.ndarray],
                         peer: dict[int, np.ndarray], draws: int = DRAWS,
                         seed: int = 0) -> np.ndarray | None:
    """Draws of the seed-averaged image-AUROC difference peer - ours under a stratified
    bootstrap of the test images (normal and anomalous resampled separately; one resampled
    test set per draw, shared by both sides and every common seed, since they score the same
    images). None without per-image scores for a common seed."""
    common = sorted(set(ours) & set(peer))
    labels = np.asarray(labels).astype(int)
    if not common or labels.min() == labels.max():
        return None
    rng = np.random.default_rng(seed)
    na, nn = int(labels.sum()), int((1 - labels).sum())
    counts = (rng.multinomial(na, [1 / na] * na, size=draws).astype(float),
              rng.multinomial(nn, [1 / nn] * nn, size=draws).astype(float))
    diff = auroc_draws(labels, {k: peer[k] for k in common}, counts) - \
        auroc_draws(labels, {k: ours[k] for k in common}, counts)
    return diff.mean(axis=0)


def interval(ours: dict[int, float], peer: dict[int, float], boot: np.ndarray | None = None,
             level: float = 0.95) -> tuple[float, float, int] | None:
    """``level`` interval of the difference peer - ours over the seeds both sides ran (paired
    by seed: a seed fixes the same training order and initial draws' seed on both sides).

    Two sources of noise, added in quadrature: the seed spread (Student t half-width of the
    mean of the per-seed differences, with 2+ common seeds) and the test set (``boot``: draws
    of the same difference under a stratified bootstrap of the test images,
    :func:`bootstrap_difference`; normal half-width ``z * sd``). Returns (low, high, n seeds)
    or None when neither is available (one common seed and no per-image scores)."""
    from scipy import stats

    common = sorted(set(ours) & set(peer))
    diffs = np.array([peer[s] - ours[s] for s in common], dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return None
    halves = []
    if diffs.size >= 2:
        sem = float(diffs.std(ddof=1) / np.sqrt(diffs.size))
        halves.append(float(stats.t.ppf(0.5 + level / 2, diffs.size - 1)) * sem)
    if boot is not None and len(boot) > 1:
        halves.append(float(stats.norm.ppf(0.5 + level / 2)) * float(np.std(boot, ddof=1)))
    if not halves:
        return None
    mean, half = float(diffs.mean()), float(np.hypot(*halves)) if len(halves) == 2 else halves[0]
    return mean - half, mean + half, int(diffs.size)


def _per_seed(records: list[dict], metric: str) -> dict[int, float]:
    return {int(r.get("seed", i)): float(r["metrics"][metric]) for i, r in enumerate(records)
            if r.get("status", "ok") == "ok" and r["metrics"].get(metric) is not None
            and np.isfinite(r["metrics"][metric])}


def _verdict(ours: dict[int, float], peer: dict[int, float],
             boot: np.ndarray | None = None) -> str:
    """Two-sided: *within noise* when the 95 % interval of peer - ours (:func:`interval`)
    contains 0, *ours above* / *ours below* when it lies wholly on one side; *not compared*
    when the two sides have fewer than 2 seeds in common (equal seed counts are required:
    only the common seeds count); ``boot`` adds the test set's noise (:func:`interval`)."""
    if not ours or not peer:
        return "—"
    found = interval(ours, peer, boot)
    if found is None:
        return (f"not compared (seeds in common: {len(set(ours) & set(peer))}; ours n={len(ours)},"
                f" peer n={len(peer)})")
    low, high, n = found
    where = f"[{low:+.3f}, {high:+.3f}], n={n}"
    if low <= 0.0 <= high:
        return f"within noise {where}"
    return f"**ours {'below' if low > 0 else 'above'}** {where}"


def peers_section(paper: str, results_dir: Path) -> list[str]:
    """The section for ``paper``'s report (empty if no peer method reproduces this paper)."""
    method = next((m for m, d in deviations().items() if d["paper"] == paper), None)
    if method is None:
        return []
    entry = deviations()[method]
    lines = ["## Ours vs anomalib 2.7, same features", "",
             f"anomalib {PEER_VERSION}'s `{method}` torch model (no Lightning) trained by "
             f"`nfbench peer` on our features of variant `{entry['variant']}` and scored on "
             "the same test set through anomalib's own scoring code, on our run's device. "
             "*shipped*: anomalib's own defaults for everything anomalib lets a user set "
             "(optimizer, learning rate, fiber handling, scoring), taking from our run only "
             f"these settings: {', '.join(f'`{k}`' for k in entry['takes_from_ours'])} "
             "(features, size, passes); *matched*: shipped with exactly the deviations marked "
             "*applied* below set to our run's values. Mean over seeds ± their standard "
             "deviation (n seeds); Δ = anomalib − ours. Last column: the 95 % interval of "
             "anomalib − ours over the seeds both ran (paired by seed), combining the seed "
             "spread (t-interval, 2+ common seeds) and, for image AUROC, a stratified bootstrap "
             "of the test images (per-image scores of both sides; every category's test set "
             "resampled jointly on the mean row): *within noise* when it contains 0, else ours "
             "above / below; *not compared* when neither noise estimate exists (one common "
             "seed and no per-image scores).", ""]
    root = Path(results_dir) / "peers" / method
    peer = {c: _records(root / c) for c in CONFIGS}
    found = [r for recs in peer.values() for rs in recs.values() for r in rs]
    if not found:
        return lines + [f"*Not run in this profile* (params.yaml `peers:` has no `{method}` "
                        f"runs, or the `peers` stage has not run). To run it: `nfbench peers`; "
                        f"it needs the `peers` extra: `{ENABLE_HINT}`.", ""]
    skipped = [r for r in found if r.get("status") == "skipped"]
    if skipped:
        lines += [f"**Skipped**: {skipped[0]['note']}.", ""]
    devs = entry["deviations"]
    number = {d["id"]: i + 1 for i, d in enumerate(devs)}
    arises = {d["id"] for d in devs if d["matched"] != "n/a"}
    kept = lambda config: sorted({number[i] for rs in peer[config].values() for r in rs
                                  for i in r.get("deviations_kept", []) if i in arises})
    ours = _records(Path(results_dir) / paper / "runs" / entry["variant"])
    for category, extra in _records(root / "ours").items():  # the peers stage's extra seeds
        have = {r.get("seed") for r in ours.get(category, [])}
        ours.setdefault(category, []).extend(r for r in extra if r.get("seed") not in have)
    # the categories the peers ran (params.yaml `peers.<profile>` may name fewer than ours):
    # ours is compared there only, the mean row included
    categories = sorted({c for recs in peer.values() for c in recs})
    shown = [c for c in CONFIGS if any(peer[c].values())]  # configs this profile ran
    versus_name = "matched" if "matched" in shown else "shipped"
    versus = peer[versus_name]
    if set(ours) - set(categories):
        lines += [f"Categories: those the peers ran ({', '.join(categories)}; params.yaml "
                  f"`peers:`), ours on the same ones.", ""]
    labels = {c: f"anomalib {c} (deviates: {', '.join(map(str, kept(c))) or 'none'})"
              for c in shown}
    for metric, title in METRICS.items():
        head = "".join(f" {labels[c]} | Δ {c} |" for c in shown)
        lines += [f"**{title}**", "",
                  f"| category | ours |{head} ours vs {versus_name} |",
                  "|---|---|" + "---|---|" * len(shown) + "---|"]
        for category in categories + ["mean"]:
            if category == "mean":
                per = lambda recs: [r for c in categories for r in recs.get(c, [])]
                o = _stat(per(ours), metric)
                stats = {c: _stat(per(peer[c]), metric) for c in shown}
                seeds = lambda recs: _seed_means(recs, categories, metric)
                boots = [_boot(ours.get(c, []), versus.get(c, [])) for c in categories] \
                    if metric == "image_auroc" else [None]
                # every category's test set resampled jointly: the mean of independent draws
                boot = np.mean(boots, axis=0) if all(b is not None for b in boots) else None
            else:
                o = _stat(ours.get(category, []), metric)
                stats = {c: _stat(peer[c].get(category, []), metric) for c in shown}
                seeds = lambda recs: _per_seed(recs.get(category, []), metric)
                boot = _boot(ours.get(category, []), versus.get(category, [])) \
                    if metric == "image_auroc" else None
            cells = "".join(f" {_cell(*stats[c])} | {_diff(stats[c][0], o[0])} |" for c in shown)
            lines.append(f"| {category} | {_cell(*o)} |{cells} "
                         f"{_verdict(seeds(ours), seeds(versus), boot)} |")
        lines.append("")
    lines += ["Ways anomalib deviates from the paper (`nfbench/peers/deviations.yaml`; "
              "*matched*: applied = changed to our run's value in the matched run, fixed = "
              "hard-coded in anomalib, n/a = does not arise on shared features):", ""]
    lines += [f"{number[d['id']]}. {d['what']} — anomalib: {d['shipped']}; paper: {d['paper']} "
              f"(matched: {d['matched']})" for d in devs]
    if entry.get("note"):
        lines += ["", f"Note: {entry['note']}."]
    if "matched" not in shown and "shipped" in shown:
        lines += ["", "No *matched* run: no listed deviation can be changed through anomalib's "
                  "API on shared features (each is n/a or hard-coded), so *matched* would "
                  "equal *shipped*; the last column compares ours with *shipped*."]
    return lines + [""]
