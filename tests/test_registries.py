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


def test_per_category_facts_are_package_data_in_the_code_version(monkeypatch):
    from nfbench import code_digest as cd
    from nfbench.methods.clscnf.config import ORIGINAL_W
    from nfbench.methods.synthetic.foreground import OBJECT_MASK_RULES

    assert ORIGINAL_W["bottle"] == 0.3 and ORIGINAL_W["02"] == 0.05 and len(ORIGINAL_W) == 18
    assert OBJECT_MASK_RULES["metal_nut"] == ("bright", False)  # bright, no hole filling
    assert OBJECT_MASK_RULES["grid"] == ("dark", False) and OBJECT_MASK_RULES["02"] == ("none", True)
    assert OBJECT_MASK_RULES["coin"] == ("bright", True)
    starts = ("nfbench.methods.clscnf", "nfbench.pipeline.experiment")
    before = cd.code_digest(*starts)
    read = cd._read_source

    def edited(path):
        text = read(path)
        return text.replace("bottle: 0.3", "bottle: 0.35") if path.name == "original_w.yaml" \
            else text

    monkeypatch.setattr(cd, "_read_source", edited)
    cd.code_digest.cache_clear()
    try:
        assert cd.code_digest(*starts) != before  # a changed w is a new code version
        monkeypatch.setattr(cd, "_read_source", lambda p: read(p) + "\n# a comment\n"
                            if p.suffix == ".yaml" else read(p))
        cd.code_digest.cache_clear()
        assert cd.code_digest(*starts) == before  # a comment is not
    finally:
        cd.code_digest.cache_clear()


def test_bad_package_data_is_one_line(tmp_path):
    from nfbench.methods import package_data

    (tmp_path / "m.py").write_text("")
    (tmp_path / "d.yaml").write_text("[1, 2]\n")
    with pytest.raises(UserError, match=r"d.yaml: expected a mapping at the top"):
        package_data.load(str(tmp_path / "m.py"), "d.yaml")
    with pytest.raises(UserError, match=r"d.yaml: mvtec_ad.bottle: expected"):
        package_data.fail(str(tmp_path / "m.py"), "d.yaml", "mvtec_ad.bottle", "expected w")


def test_the_demo_generator_stages_as_the_downloads_do(tmp_path):
    """One staging implementation: the demo build removes a killed build's staging folder
    (as a download does) and leaves none of its own."""
    from nfbench.datasets.demo.generator import generate_demo

    stale = tmp_path / ".demo.partial-999999999-abcd"  # no such process
    stale.mkdir()
    root = generate_demo(tmp_path / "demo", image_size=32, n_train=1, n_test_good=1,
                         n_test_defect_per_type=1, categories=("brick",), progress=False)
    assert (root / "demo.json").is_file() and not stale.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]
    # an outdated set is swapped out through a staging folder, none left behind
    generate_demo(root, image_size=32, n_train=2, n_test_good=1, n_test_defect_per_type=1,
                  categories=("brick",), progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]
    assert len(list((root / "brick" / "train" / "good").iterdir())) == 2
