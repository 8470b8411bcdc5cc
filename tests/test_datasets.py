"""Dataset loaders on synthetic copies of the official layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nfbench.datasets import ImageSet, btad, load_table, mtd, mvtec_ad
from nfbench.datasets.base import load_image, load_mask
from nfbench.errors import DatasetLayoutError


def _png(path: Path, value: int = 128, size=(8, 8), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full(size + ((3,) if mode == "RGB" else ()), value, dtype=np.uint8)
    Image.fromarray(array, mode).save(path)


def _mvtec_category(root: Path, category: str, counts: tuple[int, int, int]) -> None:
    train, good, bad = counts
    for i in range(train):
        _png(root / category / "train" / "good" / f"{i:03d}.png")
    for i in range(good):
        _png(root / category / "test" / "good" / f"{i:03d}.png")
    for i in range(bad):
        defect = "crack" if i % 2 else "scratch"
        _png(root / category / "test" / defect / f"{i:03d}.png")
        _png(root / category / "ground_truth" / defect / f"{i:03d}_mask.png", 255, mode="L")


def test_mvtec_official_layout_and_counts(tmp_path):
    _mvtec_category(tmp_path, "toothbrush", mvtec_ad.OFFICIAL_COUNTS["toothbrush"])
    table = mvtec_ad.load(tmp_path, ["toothbrush"])
    assert mvtec_ad.split_counts(table) == (60, 12, 30)
    assert list(table.columns) == ["path", "split", "label", "defect_type", "mask_path", "category"]
    defective = table[table["label"] == 1]
    assert defective["mask_path"].str.endswith("_mask.png").all()
    assert table[table["label"] == 0]["mask_path"].isna().all()
    assert set(defective["defect_type"]) == {"crack", "scratch"}


def test_mvtec_wrong_counts_and_missing_mask_are_named(tmp_path):
    _mvtec_category(tmp_path, "toothbrush", (59, 12, 30))
    with pytest.raises(DatasetLayoutError, match=r"toothbrush.*\(59, 12, 30\)"):
        mvtec_ad.load(tmp_path, ["toothbrush"])
    (tmp_path / "toothbrush/ground_truth/crack/001_mask.png").unlink()
    with pytest.raises(DatasetLayoutError, match="001_mask.png"):
        mvtec_ad.load(tmp_path, ["toothbrush"], check_counts=False)
    with pytest.raises(DatasetLayoutError, match="bottle/train/good"):
        mvtec_ad.load(tmp_path, ["bottle"])


def test_btad_masks_by_exact_stem_png_or_bmp(tmp_path):
    base = tmp_path / "02"
    for split in ("train/ok", "test/ok"):
        _png(base / split / "0000.png")
    _png(base / "test/ko/0007.png")
    _png(base / "test/ko/0008.bmp")
    _png(base / "ground_truth/ko/0007.png", 255, mode="L")
    _png(base / "ground_truth/ko/0008.bmp", 255, mode="L")
    _png(base / "ground_truth/ko/000.png", 255, mode="L")  # a stripped-stem decoy
    table = btad.load(tmp_path, ["02"])
    masks = table.dropna(subset=["mask_path"]).set_index("path")["mask_path"]
    assert masks[str(base / "test/ko/0007.png")].endswith("ground_truth/ko/0007.png")
    assert masks[str(base / "test/ko/0008.bmp")].endswith("ground_truth/ko/0008.bmp")
    (base / "ground_truth/ko/0008.bmp").unlink()
    with pytest.raises(DatasetLayoutError, match="0008"):
        btad.load(tmp_path, ["02"])


def _mtd_copy(root: Path) -> None:
    train_names = mtd.train_filenames()
    free = train_names + [f"exp9_num_{i}.jpg" for i in range(mtd.CLASS_COUNTS["Free"] - len(train_names))]
    for name in free:
        _png((root / "MT_Free/Imgs" / name).with_suffix(".jpg"), mode="L")
        _png((root / "MT_Free/Imgs" / name).with_suffix(".png"), 0, mode="L")
    for cls in mtd.DEFECT_CLASSES:
        for i in range(mtd.CLASS_COUNTS[cls]):
            _png(root / f"MT_{cls}/Imgs/exp{i}.jpg", mode="L")
            _png(root / f"MT_{cls}/Imgs/exp{i}.png", 255, mode="L")


def test_mtd_differnet_split(tmp_path):
    _mtd_copy(tmp_path)
    table = mtd.load(tmp_path)
    assert mvtec_ad.split_counts(table) == (761, 191, 392)
    assert not table["path"].str.endswith(".png").any(), "masks must not be taken for images"
    assert table[table["label"] == 1]["mask_path"].str.endswith(".png").all()
    image = load_image(table["path"].iloc[0], 16)
    assert image.shape == (3, 16, 16), "grayscale must become 3 channels"
    (tmp_path / "MT_Free/Imgs" / mtd.train_filenames()[5]).unlink()
    with pytest.raises(DatasetLayoutError, match="train images are missing"):
        mtd.load(tmp_path)


def test_masks_binarised_and_nearest_resized(tmp_path):
    array = np.zeros((10, 10), dtype=np.uint8)
    array[2:5, 2:5] = 1  # a faint (value 1) mask is still foreground: > 0
    Image.fromarray(array).save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png", 20)
    assert mask.dtype == bool and mask.sum() == 36
    assert not load_mask(None, 20).any()


def test_image_set_fingerprint_tracks_content_and_size(tmp_path):
    _mvtec_category(tmp_path, "grid", (3, 1, 1))
    table = load_table("folder", tmp_path)
    rows = table[table["split"] == "train"]
    first = ImageSet.from_table(rows, 32).fingerprint
    assert ImageSet.from_table(rows, 32).fingerprint == first
    assert ImageSet.from_table(rows, 64).fingerprint != first
    _png(tmp_path / "grid/train/good/000.png", value=7)
    assert ImageSet.from_table(rows, 32).fingerprint != first


def test_unknown_dataset_is_a_user_error():
    from nfbench.errors import UserError

    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        load_table("nope")


def test_dtd_layout_is_checked(tmp_path):
    from nfbench.datasets import load_table
    from nfbench.datasets.dtd import CATEGORIES, IMAGES_PER_CLASS
    from nfbench.errors import DatasetLayoutError

    assert len(CATEGORIES) == 47
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        load_table("dtd", tmp_path / "dtd")
    for name in CATEGORIES[:2]:
        (tmp_path / "dtd/images" / name).mkdir(parents=True)
        for k in range(IMAGES_PER_CLASS):
            (tmp_path / "dtd/images" / name / f"{name}_{k:04d}.jpg").touch()
    table = load_table("dtd", tmp_path / "dtd", CATEGORIES[:2])
    assert len(table) == 2 * IMAGES_PER_CLASS and set(table["split"]) == {"train"}
    (tmp_path / "dtd/images" / CATEGORIES[0] / f"{CATEGORIES[0]}_0000.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match="incomplete DTD"):
        load_table("dtd", tmp_path / "dtd", CATEGORIES[:2])
