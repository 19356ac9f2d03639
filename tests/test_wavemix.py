"""WaveMix: same function and same checkpoint keys as the reference package, filters that move with the model."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from backbones.models.wavemix import HaarDWT, wavemix_192_16


@pytest.fixture(scope="module")
def reference_class():
    # wavemix 0.2.4 imports numpy.lib.function_base (gone in numpy 2) for a name it never uses.
    sys.modules.setdefault("numpy.lib.function_base", types.SimpleNamespace(hamming=None))
    from wavemix.classification import WaveMix

    return WaveMix


def test_matches_the_reference_package(reference_class):
    torch.manual_seed(0)
    reference = reference_class(
        num_classes=1000,
        depth=16,
        mult=2,
        ff_channel=192,
        final_dim=192,
        dropout=0.5,
        level=3,
        initial_conv="pachify",
        patch_size=4,
    ).eval()
    # Give BatchNorm non-trivial statistics, so the comparison covers them too.
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    ours = wavemix_192_16().eval()
    reference_state = reference.state_dict()
    assert list(ours.state_dict()) == list(reference_state)
    assert all(ours.state_dict()[k].shape == v.shape for k, v in reference_state.items())
    ours.load_state_dict(reference_state)
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images), rtol=1e-4, atol=1e-5)


def test_wavelet_filters_are_buffers_that_follow_the_module():
    model = wavemix_192_16(num_classes=3)
    assert not any("filters" in key for key in model.state_dict())  # not part of the checkpoint contract
    model = model.double().eval()
    assert all(b.dtype == torch.float64 for name, b in model.named_buffers() if name.endswith("filters"))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


def test_haar_transform_is_orthonormal():
    x = torch.randn(2, 5, 16, 16, dtype=torch.float64)
    low, highs = HaarDWT().double()(x)
    assert low.shape == (2, 5, 8, 8) and highs.shape == (2, 15, 8, 8)
    torch.testing.assert_close(low.square().sum() + highs.square().sum(), x.square().sum())
    # The low band of a constant image is twice the constant (1/sqrt(2) per axis, summed over 2x2).
    torch.testing.assert_close(HaarDWT()(torch.ones(1, 1, 4, 4))[0], torch.full((1, 1, 2, 2), 2.0))
