"""The offline demo dataset: MVTec layout, exact defect masks, determinism, atomic no-op reruns."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from scipy import stats

from nfbench.datasets.demo import generator, images
from nfbench.datasets.demo.categories import (AREA_RANGE, CATEGORY_DEFECTS, CATEGORY_KIND,
                                              DEFECT_TYPES, DEMO_CATEGORIES)
from nfbench.datasets.demo.defects import make_defect_example
from nfbench.datasets.demo.generator import generate_demo
from nfbench.datasets.demo.images import make_normal

SMALL = dict(image_size=128, n_train=6, n_test_good=3, n_test_defect_per_type=2, progress=False)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo-small") / "demo"
    assert generate_demo(root, seed=0, **SMALL) == root
    return root


def _png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_categories_and_defect_types():
    assert DEMO_CATEGORIES == ("brick", "gravel", "coin", "logo")
    assert set(CATEGORY_KIND) == set(CATEGORY_DEFECTS) == set(DEMO_CATEGORIES)
    assert [CATEGORY_KIND[c] for c in DEMO_CATEGORIES] == ["texture", "texture", "object", "object"]
    assert "good" not in DEFECT_TYPES
    for cat, defects in CATEGORY_DEFECTS.items():
        assert len(defects) == 4 and len(set(defects)) == 4 and set(defects) <= set(DEFECT_TYPES)
    # objects get the object defects of MVTec AD: missing or misplaced parts
    assert "missing" in CATEGORY_DEFECTS["coin"]
    assert {"missing", "misplaced"} <= set(CATEGORY_DEFECTS["logo"])
    for defects in CATEGORY_DEFECTS.values():  # a thin line-like and a foreign-matter defect
        assert "contamination" in defects and {"scratch", "crack", "thread"} & set(defects)


def test_mvtec_layout_and_counts(small_demo):
    assert sorted(p.name for p in small_demo.iterdir() if p.is_dir()) == sorted(DEMO_CATEGORIES)
    for cat in DEMO_CATEGORIES:
        base = small_demo / cat
        assert [p.name for p in sorted((base / "train").iterdir())] == ["good"]
        defects = CATEGORY_DEFECTS[cat]
        assert sorted(p.name for p in (base / "test").iterdir()) == sorted(("good",) + defects)
        assert sorted(p.name for p in (base / "ground_truth").iterdir()) == sorted(defects)
        train = sorted(p.name for p in (base / "train" / "good").iterdir())
        assert train == [f"{i:03d}.png" for i in range(6)]
        assert len(list((base / "test" / "good").iterdir())) == 3
        for defect in defects:
            names = sorted(p.name for p in (base / "test" / defect).iterdir())
            assert names == ["000.png", "001.png"]
        for image in base.rglob("*.png"):
            if "ground_truth" not in image.parts:
                array = _png(image)
                assert array.shape == (128, 128, 3) and array.dtype == np.uint8
    manifest = json.loads((small_demo / "demo.json").read_text())
    assert manifest["seed"] == 0 and manifest["image_size"] == 128
    assert manifest["version"] == generator.GENERATOR_VERSION
    assert manifest["counts"]["brick"] == {
        "train": {"good": 6}, "test": {"good": 3, **{d: 2 for d in CATEGORY_DEFECTS["brick"]}}}
    assert manifest["defect_types"] == {c: list(CATEGORY_DEFECTS[c]) for c in DEMO_CATEGORIES}


def test_scanner_reads_the_demo_set(small_demo):
    from nfbench.datasets.mvtec_ad import load_folder

    table = load_folder(small_demo)
    assert len(table) == sum(6 + 3 + 2 * len(CATEGORY_DEFECTS[c]) for c in DEMO_CATEGORIES)


def test_every_defect_has_a_nonempty_binary_mask_that_marks_a_visible_change(small_demo):
    significant = []
    for cat in DEMO_CATEGORIES:
        for defect in CATEGORY_DEFECTS[cat]:
            for image_path in sorted((small_demo / cat / "test" / defect).iterdir()):
                mask_path = (small_demo / cat / "ground_truth" / defect
                             / f"{image_path.stem}_mask.png")
                mask = _png(mask_path)
                assert mask.shape == (128, 128) and mask.dtype == np.uint8
                assert set(np.unique(mask)) <= {0, 255} and (mask == 255).any()
                image = _png(image_path).astype(float).mean(-1)
                inside = mask > 0
                ring = (ndi.binary_dilation(inside, iterations=8)
                        & ~ndi.binary_dilation(inside, iterations=2))
                significant.append(stats.ks_2samp(image[inside], image[ring]).pvalue < 0.05)
    # the masked regions differ in distribution from their surroundings
    assert np.mean(significant) >= 0.9


@pytest.mark.parametrize("category", DEMO_CATEGORIES)
def test_defects_change_only_the_masked_pixels(category):
    strengths = []
    for defect in CATEGORY_DEFECTS[category]:
        for i in range(4):
            clean, defective, mask = make_defect_example(
                category, defect, np.random.default_rng([7, i]), image_size=128)
            assert clean.shape == defective.shape == (128, 128, 3) and mask.shape == (128, 128)
            assert mask.dtype == bool and mask.any()
            outside = ~ndi.binary_dilation(mask, iterations=2)
            assert np.array_equal(defective[outside], clean[outside])
            change = np.abs(defective.astype(int) - clean.astype(int)).max(-1)
            assert (change[mask] > 0).mean() > 0.8  # the mask is what the defect changed
            strengths.append(change[mask].mean())
            # the same generator state gives the same clean image as a normal sample
            assert np.array_equal(clean, make_normal(category, np.random.default_rng([7, i]), 128))
    # visible, with a range of contrasts
    assert min(strengths) > 10 and max(strengths) > 50 and max(strengths) > 1.5 * min(strengths)


@pytest.mark.parametrize("category", DEMO_CATEGORIES)
def test_defect_areas_are_mvtec_like_at_the_demo_size(category):
    """At 256 px every defect covers ~1-10 % of the image (AREA_RANGE), objects' defects lie
    on the object, and each defect type spans a range of sizes."""
    lo, hi = AREA_RANGE
    assert 0.005 <= lo < 0.015 and 0.08 <= hi <= 0.12
    for defect in CATEGORY_DEFECTS[category]:
        areas = []
        for i in range(6):
            rng = np.random.default_rng([11, i])
            _, _, mask = make_defect_example(category, defect, rng, image_size=256)
            areas.append(mask.mean())
            if CATEGORY_KIND[category] == "object":
                _, obj, _ = images.normal_scene(category, np.random.default_rng([11, i]), 256)
                assert (obj[mask] > 0.01).all(), (defect, i)  # on the object, not beside it
        assert lo <= min(areas) and max(areas) <= hi, (defect, areas)
        assert max(areas) > 1.3 * min(areas), (defect, areas)


def test_unknown_defect_type_of_a_category_is_refused():
    from nfbench.errors import UserError

    with pytest.raises(UserError, match="misplaced"):
        make_defect_example("brick", "misplaced", np.random.default_rng(0), 64)


def test_same_seed_is_byte_identical_other_seed_differs(small_demo, tmp_path):
    again = generate_demo(tmp_path / "again", seed=0, **SMALL)
    assert _files(again) == _files(small_demo)
    other = _files(generate_demo(tmp_path / "other", seed=1, **SMALL))
    same = _files(small_demo)
    assert other.keys() == same.keys()
    pngs = [k for k in same if k.endswith(".png") and "ground_truth" not in k]
    assert all(other[k] != same[k] for k in pngs)


def test_second_call_is_a_noop_and_new_parameters_rebuild(tmp_path):
    root = tmp_path / "demo"
    params = dict(SMALL, categories=("coin",), n_train=2, n_test_good=1, n_test_defect_per_type=1)
    generate_demo(root, **params)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert generate_demo(root, **params) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    generate_demo(root, **dict(params, n_train=3))
    assert len(list((root / "coin" / "train" / "good").iterdir())) == 3
    assert json.loads((root / "demo.json").read_text())["n_train"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary folders left


def test_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = generator.make_defect_example

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(generator, "make_defect_example", failing)
    with pytest.raises(RuntimeError, match="boom"):
        generate_demo(tmp_path / "demo", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    from nfbench.errors import UserError

    root = tmp_path / "data"
    root.mkdir()
    (root / "mine.txt").write_text("keep me")
    with pytest.raises(UserError):
        generate_demo(root, **SMALL)
    assert (root / "mine.txt").read_text() == "keep me"
    with pytest.raises(UserError):
        generate_demo(tmp_path / "x", categories=("nope",), **SMALL)


@pytest.mark.slow
def test_default_size_category_is_fast(tmp_path):
    start = time.perf_counter()
    generate_demo(tmp_path / "demo", categories=("brick",), progress=False)
    elapsed = time.perf_counter() - start
    assert len(list((tmp_path / "demo" / "brick" / "train" / "good").iterdir())) == 60
    assert elapsed < 10.0, f"one default-size demo category took {elapsed:.1f} s"
