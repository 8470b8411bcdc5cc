"""Dataset and backbone facts are declared in their registries, and the pipeline, cost model
and reports read them there instead of naming datasets (``demo``, ``folder``) in code."""
from dataclasses import replace

import pytest

from nfbench import datasets
from nfbench.backbones import BACKBONES, backbone_label
from nfbench.datasets import DATASETS, categories_of, images_per_category
from nfbench.datasets.mvtec_ad import OFFICIAL_COUNTS
from nfbench.errors import UserError
from nfbench.pipeline.spec import GROUPS, TableSpec, category_groups, category_kinds
from nfbench.pipeline.tables import comparable_dataset
from nfbench.report.context import dataset_label


def test_every_dataset_declares_its_label_and_kinds_fit_its_categories():
    for name, spec in DATASETS.items():
        assert spec.label, name
        assert set(spec.category_kinds) <= set(spec.categories), name
        assert set(spec.category_kinds.values()) <= set(GROUPS.values()), name
    assert dataset_label("demo") == "demo set" and dataset_label("mvtec_ad") == "MVTec AD"
    assert dataset_label("unregistered") == "unregistered"


def test_stand_ins_are_declared_not_named(monkeypatch):
    assert [n for n, s in DATASETS.items() if s.stand_in] == ["demo"]
    assert not comparable_dataset("demo") and comparable_dataset("mvtec_ad")
    assert comparable_dataset("folder")
    table = TableSpec(id="t", title="t", groups=())
    assert category_groups(table, "demo", ["brick", "coin"]) == \
        {"textures": ["brick"], "objects": ["coin"]}
    assert category_groups(table, "mvtec_ad", ["carpet", "bottle"]) == {}
    # a stand-in of MVTec AD declared in the registry behaves as the demo set, by its entry
    monkeypatch.setitem(DATASETS, "mvtec_ad", replace(DATASETS["mvtec_ad"], stand_in=True))
    assert not comparable_dataset("mvtec_ad")
    assert category_groups(table, "mvtec_ad", ["carpet", "bottle"]) == \
        {"textures": ["carpet"], "objects": ["bottle"]}
    assert category_kinds("btad") == {}


def test_cost_model_counts_come_from_the_registry():
    # the numbers benchmarks/cost.yaml held before they moved to the registry
    assert images_per_category("mvtec_ad") == (242, 115)  # 3629 / 1725 over 15
    assert images_per_category("btad") == (600, 247)
    assert images_per_category("mtd") == (762, 582)
    assert images_per_category("demo") == (60, 52)
    assert images_per_category("folder") == images_per_category("dtd") == (242, 115)
    assert sum(c[0] for c in OFFICIAL_COUNTS.values()) == 3629


def test_folder_needs_a_root_and_its_categories_are_found_there(tmp_path):
    with pytest.raises(UserError, match="'folder' dataset needs --root"):
        datasets.load_table("folder")
    for category in ("b", "a"):
        (tmp_path / category / "train" / "good").mkdir(parents=True)
    assert categories_of("folder", tmp_path) == ("a", "b")
    assert categories_of("demo") == ("brick", "gravel", "coin", "logo")
    assert categories_of("demo", tmp_path) == ("a", "b")
    assert categories_of("mvtec_ad", tmp_path)[0] == "bottle"  # a fixed list, not the folders


def test_backbone_labels_are_the_registry_entries():
    assert {name: spec.label for name, spec in BACKBONES.items()
            if name != "tf_efficientnet_b5.aa_in1k"} == {
        "efficientnet_lite0": "EfficientNet-Lite0", "efficientnet_b5": "EfficientNet-B5",
        "wide_resnet50_2": "WideResNet-50-2"}
    assert backbone_label("resnet18") == "resnet18"  # not registered: its name as it is
    assert backbone_label(None) == "?"
