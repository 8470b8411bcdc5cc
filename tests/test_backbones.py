"""Backbones: offline weights are real ImageNet weights; extractors are frozen; the cache works."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nfbench.backbones import FeatureExtractor, get_backbone_spec, imagenet_classifier


def _photo(name: str) -> torch.Tensor:
    import skimage.data

    image = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)


@pytest.mark.parametrize("photo, imagenet_class", [("chelsea", 285), ("coffee", 967)])
def test_offline_lite0_classifies_bundled_photos(photo, imagenet_class):
    spec = get_backbone_spec("efficientnet_lite0")
    net = imagenet_classifier("efficientnet_lite0")
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = net((_photo(photo) - mean) / std)
    assert logits.argmax().item() == imagenet_class  # 285 Egyptian cat, 967 espresso


def test_roles_map_to_paper_strides_and_extractor_is_frozen():
    extractor = FeatureExtractor("efficientnet_lite0", ["stride8", "stride16", "stride32"])
    maps = extractor(torch.rand(1, 3, 128, 128))
    assert [m.shape[-1] for m in maps] == [16, 8, 4]
    assert extractor.channels() == [40, 80, 192]
    assert not any(p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.training, "a frozen backbone must stay in eval mode"
    assert not any(m.training for m in extractor.modules())


def test_bad_layer_is_a_user_error():
    from nfbench.errors import UserError

    with pytest.raises(UserError, match="no layer 'layer3'"):
        FeatureExtractor("efficientnet_lite0", ["layer3"])
    with pytest.raises(UserError, match="unknown backbone"):
        get_backbone_spec("resnet9000")


def test_feature_cache_reuses_shares_and_invalidates(tiny_demo, tmp_path, monkeypatch):
    from nfbench import feature_cache
    from nfbench.datasets import image_sets, load_table

    table = load_table("demo", tiny_demo)
    train, _ = image_sets(table, table["category"].iloc[0], 64)
    subset = train.subset([0, 1, 2])
    first = feature_cache.cached_features("efficientnet_lite0", ["stride32"], subset, n_scales=2,
                                          root=tmp_path, progress=False)
    assert [f[0].shape for f in first] == [(3, 192, 2, 2), (3, 192, 1, 1)]
    # one entry per (layer, scale); the other shared roles were computed in the same pass
    assert len(list(tmp_path.rglob("*.pt"))) == 3 * 2
    calls = []
    real = feature_cache.compute_features
    monkeypatch.setattr(feature_cache, "compute_features",
                        lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    again = feature_cache.cached_features("efficientnet_lite0", ["stride32"], subset, n_scales=2,
                                          root=tmp_path, progress=False)
    assert torch.equal(again[1][0], first[1][0])
    shared = feature_cache.cached_features("efficientnet_lite0", ["stride8", "stride16"], subset,
                                           n_scales=1, root=tmp_path, progress=False)
    assert not calls, "cached entries (also another method's layers) must be read, not recomputed"
    assert shared[0][0].shape == (3, 40, 8, 8)
    direct = real("efficientnet_lite0", ["stride8"], subset, (0,), progress=False)
    assert torch.allclose(direct[(0, "stride8")], shared[0][0])
    feature_cache.cached_features("efficientnet_lite0", ["stride32"], subset.with_size(96),
                                  n_scales=1, root=tmp_path, progress=False)
    assert calls, "a changed input size must miss the cache"
