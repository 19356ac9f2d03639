"""The backbone registry: names, heads, sizes, and every way weights arrive."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from backbones import models
from backbones.errors import UserError
from conftest import plant_imagenet_weights

# The aliases the README's backbone table lists.
ALIASES = {
    "resnet": "resnet50",
    "convnext": "convnext_tiny",
    "swin": "swin_t",
    "swinv2": "swin_v2_t",
    "efficientnet": "efficientnet_v2_s",
    "densenet": "densenet161",
    "mobilenet": "mobilenet_v3_large",
    "regnet": "regnet_y_3_2gf",
    "resnext": "resnext50_32x4d",
    "shufflenet": "shufflenet_v2_x2_0",
}
PARAMS_M = {
    "resnet50": 25.6,
    "wavemix": 27.9,
    "convnext_tiny": 28.6,
    "swin_t": 28.3,
    "swin_v2_t": 28.4,
    "efficientnet_v2_s": 21.5,
    "densenet161": 28.7,
    "mobilenet_v3_large": 5.5,
    "regnet_y_3_2gf": 19.4,
    "resnext50_32x4d": 25.0,
    "shufflenet_v2_x2_0": 7.4,
}


def test_the_eleven_backbones_are_registered():
    assert models.list_models() == list(PARAMS_M)


@pytest.mark.parametrize("alias, name", ALIASES.items())
def test_aliases_resolve(alias, name):
    assert models.resolve_name(alias) == name


@pytest.mark.parametrize("name", list(PARAMS_M))
def test_backbone_builds_with_new_head_and_table_size(name):
    model = models.create_model(name, 7, "none").eval()
    head = model.get_submodule(models.BACKBONES[name].head)
    assert isinstance(head, torch.nn.Linear) and head.out_features == 7
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    # The table counts the 1000-class ImageNet head.
    params_1000 = sum(p.numel() for p in model.parameters()) + (1000 - 7) * (head.in_features + 1)
    assert params_1000 / 1e6 == pytest.approx(PARAMS_M[name], rel=0.02)


def test_unknown_model_lists_what_exists():
    with pytest.raises(UserError, match="Unknown model 'vgg16'") as caught:
        models.create_model("vgg16", 3, "none")
    assert all(name in str(caught.value) for name in PARAMS_M) and "timm:" in str(caught.value)


def test_any_timm_model_builds_with_the_right_head():
    model = models.create_model("timm:test_resnet", 4, "none").eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    with pytest.raises(UserError, match="timm has no model"):
        models.create_model("timm:no_such_net", 4, "none")


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "wavemix", "densenet161"])
def test_cached_imagenet_weights_load_offline(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _refuse_network)  # prove nothing is fetched
    planted = plant_imagenet_weights(name, tmp_path)
    model = models.create_model(name, 3, "imagenet")
    head = models.BACKBONES[name].head
    loaded = model.state_dict()
    for key, value in planted.items():
        if key.startswith(head + "."):
            assert loaded[key].shape[0] == 3  # the head was replaced
        else:
            assert torch.equal(loaded[key], value), key


def _refuse_network(url, *args, **kwargs):
    raise urllib.error.URLError(f"no network for {url}")


def test_failed_weights_download_says_where_the_cache_is(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _refuse_network)
    with pytest.raises(UserError) as caught:
        models.create_model("shufflenet", 3, "imagenet")
    message = str(caught.value)
    assert str(tmp_path / "hub" / "checkpoints" / "shufflenetv2_x2_0-8be3c8ee.pth") in message
    assert "--weights none" in message and "Offline" in message


def test_weights_file_round_trip_and_new_head(tmp_path):
    source = models.create_model("mobilenet", 5, "none")
    torch.save({"model": source.state_dict(), "meta": {"seed": 0}}, tmp_path / "best.pt")
    same = models.create_model("mobilenet", 5, str(tmp_path / "best.pt"))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), same.state_dict().values(), strict=True))
    # A plain state dict from a compiled/DataParallel model, for a task with another class count.
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "plain.pt")
    other = models.create_model("mobilenet", 9, str(tmp_path / "plain.pt"))
    assert other.classifier[3].out_features == 9
    assert torch.equal(other.features[0][0].weight, source.features[0][0].weight)


def test_weights_file_of_another_architecture_is_refused(tmp_path):
    torch.save(models.create_model("shufflenet", 5, "none").state_dict(), tmp_path / "shuffle.pt")
    with pytest.raises(UserError, match="does not fit this model"):
        models.create_model("mobilenet", 5, str(tmp_path / "shuffle.pt"))


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "convnext_tiny", "wavemix"])
def test_feature_extractor_feeds_the_imagenet_classifier_it_returns(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _refuse_network)
    planted = plant_imagenet_weights(name, tmp_path)
    reference = models.BACKBONES[name].builder()
    reference.load_state_dict(planted)
    extractor, classifier = models.create_feature_extractor(name, "imagenet")
    images = torch.randn(2, 3, 64, 64)
    extractor.eval(), reference.eval()
    with torch.no_grad():
        features = extractor(images)
        assert features.shape == (2, classifier.in_features)
        assert torch.allclose(classifier(features), reference(images), atol=1e-5)


def test_feature_extractor_of_random_weights_has_no_classifier():
    extractor, classifier = models.create_feature_extractor("timm:test_resnet", "none")
    assert classifier is None
    assert extractor.eval()(torch.randn(2, 3, 32, 32)).shape == (2, extractor.num_features)
