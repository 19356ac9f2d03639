"""The batched corruptions against ImageNet-C's formulas, written here again with NumPy, SciPy, Pillow and
matplotlib as the reference implementation (`imagecorruptions`) writes them, on real photographs at 224 px."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image
from scipy import ndimage
from sklearn.datasets import load_sample_images

from backbones import corruptions
from backbones.corruptions import CORRUPTIONS, corrupt

SIZE = 224


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """scikit-learn's two bundled photographs, centre-cropped and resized to 224 px: (2, 224, 224, 3) uint8."""
    out = []
    for image in load_sample_images().images:
        side = min(image.shape[:2])
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        crop = Image.fromarray(image[top : top + side, left : left + side])
        out.append(np.asarray(crop.resize((SIZE, SIZE), Image.BILINEAR)))
    return np.stack(out)


def as_batch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def ours(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    out = corrupt(as_batch(images), name, severity, torch.Generator().manual_seed(seed))
    return out.permute(0, 2, 3, 1).numpy().astype(np.float64)


def close(mine: np.ndarray, reference: np.ndarray, share: float = 0.001, worst: float = 1.0) -> None:
    """`mine` (whole levels) is the reference (0-255, unrounded) rounded: half a level off at most, but for a
    `share` of values that float32 arithmetic and ties put a level off (`worst`: by how much at most)."""
    difference = np.abs(mine - np.clip(reference, 0, 255))
    assert difference.max() <= worst + 0.5 and (difference > 0.501).mean() <= share, (
        difference.max(),
        (difference > 0.501).mean(),
    )


# ------------------------------------------------------------------------------------- reference formulas
def reference_disk(radius: float, alias: float) -> np.ndarray:
    grid = np.arange(-8, 9) if radius <= 8 else np.arange(-radius, radius + 1)
    ksize = 3 if radius <= 8 else 5
    x, y = np.meshgrid(grid, grid)
    disk = ((x**2 + y**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = np.exp(-((np.arange(ksize) - ksize // 2) ** 2) / (2 * alias**2))
    g /= g.sum()
    kernel = ndimage.correlate(disk, np.outer(g, g), mode="mirror")  # OpenCV's GaussianBlur, BORDER_REFLECT_101
    return kernel / kernel.sum()  # the reference's sums to 1.01 at radii 8 and 10; the tool makes it 1


def reference_motion(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """imagecorruptions' _motion_blur: edge-repeating shifts along the angle, Gaussian weights."""
    width = 2 * radius + 1
    kernel = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    point = (width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle)))
    hypot = math.hypot(*point)
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(width):
        dy = -math.ceil(i * point[0] / hypot - 0.5)
        dx = -math.ceil(i * point[1] / hypot - 0.5)
        rows = np.clip(np.arange(x.shape[0]) - dy, 0, x.shape[0] - 1)
        cols = np.clip(np.arange(x.shape[1]) - dx, 0, x.shape[1] - 1)
        out += kernel[i] * x[rows][:, cols]
    return out


def reference_clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    ch0, ch1 = math.ceil(x.shape[0] / factor), math.ceil(x.shape[1] / factor)
    top0, top1 = (x.shape[0] - ch0) // 2, (x.shape[1] - ch1) // 2
    zoomed = ndimage.zoom(x[top0 : top0 + ch0, top1 : top1 + ch1], (factor, factor, 1), order=1)
    return zoomed[: x.shape[0], : x.shape[1]]


def reference(name: str, image: np.ndarray, c) -> np.ndarray:
    """The deterministic corruptions of one (H, W, 3) uint8 image, as imagecorruptions computes them (0-255)."""
    x = image / 255.0
    if name == "gaussian_blur":
        x = ndimage.gaussian_filter(x, sigma=(c, c, 0), mode="nearest", truncate=4.0)
    elif name == "defocus_blur":
        kernel = reference_disk(*c)
        x = np.stack([ndimage.correlate(x[..., d], kernel, mode="mirror") for d in range(3)], -1)
    elif name == "zoom_blur":
        factors = np.arange(1, c[1], c[0])
        x = (x + sum(reference_clipped_zoom(x, f) for f in factors)) / (len(factors) + 1)
    elif name == "contrast":
        means = x.mean(axis=(0, 1), keepdims=True)
        x = (x - means) * c + means
    elif name == "brightness":
        hsv = rgb_to_hsv(x)
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        x = hsv_to_rgb(hsv)
    elif name == "saturate":
        hsv = rgb_to_hsv(x)
        hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
        x = hsv_to_rgb(hsv)
    elif name == "pixelate":
        small = Image.fromarray(image).resize((int(SIZE * c), int(SIZE * c)), Image.BOX)
        return np.asarray(small.resize((SIZE, SIZE), Image.NEAREST), dtype=np.float64)
    elif name == "jpeg_compression":
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=c)
        return np.asarray(Image.open(buffer), dtype=np.float64)
    return np.clip(x, 0, 1) * 255


# ------------------------------------------------------------------------------------------------- tests
DETERMINISTIC = ("gaussian_blur", "defocus_blur", "zoom_blur", "contrast", "brightness", "saturate", "pixelate")


@pytest.mark.parametrize("name", DETERMINISTIC)
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_deterministic_corruptions_match_the_reference_formulas(photos, name, severity):
    mine = ours(photos, name, severity)
    parameter = CORRUPTIONS[name].severities[severity - 1]
    for index, image in enumerate(photos):
        close(mine[index], reference(name, image, parameter))


@pytest.mark.parametrize("severity", [1, 5])
def test_jpeg_matches_pillow_at_the_same_quality(photos, severity):
    """torchvision's and Pillow's libjpeg encoders differ in details (rounding, chroma filtering), not in what a
    quality level does: the two decoded images are within a few levels on average."""
    mine = ours(photos, "jpeg_compression", severity)
    quality = CORRUPTIONS["jpeg_compression"].severities[severity - 1]
    for index, image in enumerate(photos):
        theirs = reference("jpeg_compression", image, quality)
        assert np.abs(mine[index] - theirs).mean() < 2.0
        assert np.abs(mine[index] - image).mean() > 2.0  # and it did compress


@pytest.mark.parametrize("angle", [-45.0, -10.0, 0.0, 30.0, 44.0])
def test_motion_blur_matches_the_reference_shift_loop(photos, angle):
    x = torch.from_numpy(photos[:1]).permute(0, 3, 1, 2).double() / 255
    mine = corruptions.motion_kernel_blur(x, 15, 5.0, torch.tensor([angle]))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(mine, reference_motion(photos[0] / 255.0, 15, 5.0, angle), atol=1e-6)


def test_plasma_fractal_matches_the_reference_diamond_square():
    """The fog's texture: the reference's diamond-square, fed the same uniform draws."""
    size, decay = 64, 1.7
    mine = corruptions.plasma_fractal(1, size, decay, torch.Generator().manual_seed(3), "cpu")[0].double().numpy()
    draws = torch.Generator().manual_seed(3)
    maps = np.zeros((size, size))
    step, wibble = size, 100.0

    def wibbled_mean(values):
        uniform = torch.rand(values.shape, generator=draws).double().numpy()
        return values / 4 + wibble * (-wibble + 2 * wibble * uniform)  # np.random.uniform(-wibble, wibble)

    while step >= 2:
        half = step // 2
        corners = maps[0:size:step, 0:size:step]
        total = corners + np.roll(corners, -1, axis=0)
        maps[half:size:step, half:size:step] = wibbled_mean(total + np.roll(total, -1, axis=1))
        centres, corners = maps[half:size:step, half:size:step], maps[0:size:step, 0:size:step]
        maps[0:size:step, half:size:step] = wibbled_mean(
            centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        )
        maps[half:size:step, 0:size:step] = wibbled_mean(
            centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        )
        step //= 2
        wibble /= decay
    maps -= maps.min()
    np.testing.assert_allclose(mine, maps / maps.max(), atol=1e-4)


def test_fog_adds_the_texture_and_rescales_by_the_peak(photos, monkeypatch):
    texture = np.random.default_rng(0).random((SIZE, SIZE))
    monkeypatch.setattr(corruptions, "plasma_fractal", lambda b, size, *a: torch.from_numpy(texture).float()[None])
    mine = ours(photos[:1], "fog", 2)[0]
    c = CORRUPTIONS["fog"].severities[1]
    x = photos[0] / 255.0
    peak = x.max()
    close(mine, np.clip((x + c[0] * texture[..., None]) * peak / (peak + c[0]), 0, 1) * 255)


def test_elastic_matches_scipys_blur_and_sampling(photos):
    """The reference's field (SciPy's Gaussian, mirrored, truncated at 3 sigma) and its bilinear sampling with
    mirrored borders (map_coordinates), fed the same uniform draws."""
    c = CORRUPTIONS["elastic_transform"].severities[4]
    mine = ours(photos[:1], "elastic_transform", 5, seed=4)[0]
    draws = torch.rand((1, 2, SIZE, SIZE), generator=torch.Generator().manual_seed(4)).double().numpy()[0]
    reach = SIZE * 0.005
    dx, dy = (
        ndimage.gaussian_filter(2 * reach * u - reach, SIZE * 0.01, mode="reflect", truncate=3) * c for u in draws
    )
    y, x = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    channels = [
        ndimage.map_coordinates(photos[0][..., d] / 255.0, [y + dy, x + dx], order=1, mode="reflect") for d in range(3)
    ]
    close(mine, np.clip(np.stack(channels, -1), 0, 1) * 255, share=0.01)


def test_noise_has_the_published_strength():
    """On a flat grey image: Gaussian noise of std c, Poisson noise of variance x / c, salt and pepper on a share
    c of the values, half of each."""
    grey = np.full((4, SIZE, SIZE, 3), 128, dtype=np.uint8)
    x = 128 / 255
    for severity in (1, 3, 5):
        c = CORRUPTIONS["gaussian_noise"].severities[severity - 1]
        noisy = ours(grey, "gaussian_noise", severity) / 255
        expected = np.clip(x + np.random.default_rng(0).normal(scale=c, size=10**6), 0, 1)  # the formula, sampled
        assert noisy.std() == pytest.approx(expected.std(), rel=0.02)
        c = CORRUPTIONS["shot_noise"].severities[severity - 1]
        shot = ours(grey, "shot_noise", severity) / 255
        expected = np.clip(np.random.default_rng(0).poisson(x * c, size=10**6) / c, 0, 1)
        assert shot.mean() == pytest.approx(expected.mean(), rel=0.02)
        assert shot.var() == pytest.approx(expected.var(), rel=0.05)
        c = CORRUPTIONS["impulse_noise"].severities[severity - 1]
        impulse = ours(grey, "impulse_noise", severity)
        assert np.mean(impulse != 128) == pytest.approx(c, rel=0.05)
        assert np.mean(impulse == 255) == pytest.approx(c / 2, rel=0.1)


def test_snow_brightens_towards_grey_and_adds_flakes(photos):
    x = photos / 255.0
    for severity in (1, 5):
        keep = CORRUPTIONS["snow"].severities[severity - 1][6]
        gray = x @ np.array(corruptions.GRAY)
        floor = keep * x + (1 - keep) * np.maximum(x, gray[..., None] * 1.5 + 0.5)
        snowy = ours(photos, "snow", severity) / 255
        assert (snowy >= np.clip(floor, 0, 1) - 1 / 255).all()  # flakes only ever add light
        assert (snowy > np.clip(floor, 0, 1) + 0.05).mean() > 0.01  # and there are some


MONOTONE = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "zoom_blur",
            "gaussian_blur", "contrast", "brightness", "elastic_transform", "pixelate", "jpeg_compression")  # fmt: skip


@pytest.mark.parametrize("name", MONOTONE)
def test_severity_moves_the_images_further(photos, name):
    """Where a severity's parameter only grows (noise level, blur radius, JPEG quality falling...), each severity
    moves the images further from the originals than the one before."""
    distances = [np.abs(ours(photos, name, severity) - photos).mean() for severity in range(1, 6)]
    assert all(a < b for a, b in zip(distances, distances[1:], strict=False)), distances


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_corruption_is_seeded_and_keeps_the_batch_shape(photos, name):
    small = photos[:, ::4, ::4]  # 56 px: the pixel parameters scaled by 1/4
    first, again = ours(small, name, 3, seed=1), ours(small, name, 3, seed=1)
    assert first.shape == small.shape
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - small).mean() > 0.5  # it corrupted something
    assert np.array_equal(corrupt(as_batch(small), name, 0, torch.Generator()), as_batch(small))


def test_pixel_parameters_scale_with_the_image():
    """A Gaussian blur of sigma 6 px at 224 px is one of 3 px at 112 px (drawn at 6 px on the 224 px grid and
    resampled: mass 1, spread sigma^2 = 9), and one of 1/7 px at 32 px still blurs, where sampling a Gaussian that
    narrow at whole pixels would leave the image unchanged."""
    for sigma, factor, spread_tolerance in ((3.0, 2, 0.005), (2 / 7, 7, 0.06), (1 / 7, 7, 0.2)):
        kernel = corruptions.gaussian_kernel(sigma, 4.0, factor=factor).double().numpy()
        offsets = np.arange(len(kernel)) - len(kernel) // 2
        assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
        assert (kernel * offsets**2).sum() == pytest.approx(sigma**2, rel=spread_tolerance)
    narrow = corruptions.gaussian_kernel(1 / 7, 4.0, factor=7).numpy()
    assert narrow[len(narrow) // 2 + 1] > 0.02
    sampled = corruptions.gaussian_kernel(1 / 7, 4.0).numpy()  # sampled at whole pixels, as it was before
    assert sampled[len(sampled) // 2 + 1] < 1e-9
