"""ImageNet-C's corruptions (Hendrycks and Dietterich, ICLR 2019) as batched torch operations on the device.

Each corruption takes a batch of uint8 images (B, 3, H, W) and returns it corrupted, as uint8 again (rounded, as a
saved image would be), at a severity from 1 to 5 with the published parameters. Those were chosen for 224 px
images: the ones measured in pixels (blur radii and sigmas, the snow's flake size and streaks) are scaled by the
images' shorter side over 224, so a corruption hides the same share of an object at any resolution; the others
(noise levels, zoom factors, pixelation and colour factors, JPEG quality) have no unit and are used as published.
Fog's texture is relative to the image size in the reference implementation already; elastic's field is drawn
at the 224 px size and resized with the image. Random draws come from the `generator` given, so a seeded
generator reproduces a corruption exactly.

Left out: frost (it blends in photographs shipped with the reference implementation), glass blur (its local pixel
shuffling is sequential by construction: each swap sees the previous ones), and the extra validation corruptions
(speckle noise, spatter).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

REFERENCE_SIZE = 224  # the side the published parameters are defined at
GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as the reference's snow uses (OpenCV's RGB2GRAY)


@dataclass(frozen=True)
class Corruption:
    name: str
    family: str  # ImageNet-C's grouping: noise, blur, weather, digital
    severities: tuple  # the published parameter of severities 1..5
    apply: Callable  # (images in [0, 1], parameter, scale, generator) -> images


def corrupt(images: torch.Tensor, name: str, severity: int, generator: torch.Generator) -> torch.Tensor:
    """`images` (uint8, B x 3 x H x W) with corruption `name` at `severity` (1-5); 0 returns them unchanged."""
    if severity == 0:
        return images
    corruption = CORRUPTIONS[name]
    parameter = corruption.severities[severity - 1]
    if name == "jpeg_compression":  # libjpeg on the uint8 pixels, on the CPU (its decoder returns CPU tensors)
        return v2.functional.jpeg(images.cpu(), quality=parameter).to(images.device)
    scale = min(images.shape[-2:]) / REFERENCE_SIZE
    out = corruption.apply(images.float() / 255, parameter, scale, generator)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


# ------------------------------------------------------------------------------------------------- helpers
def gaussian_kernel(sigma: float, truncate: float = 4.0, device=None) -> torch.Tensor:
    """SciPy's 1-D Gaussian: radius round(truncate * sigma), normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def blur_matrix(size: int, sigma: float, truncate: float, mode: str, device) -> torch.Tensor:
    """(size, size) matrix M such that M @ v is v filtered by SciPy's Gaussian, the border handled as SciPy's
    'nearest' (`mode` 'replicate') or 'reflect' ('symmetric': mirrored about the edge, edge pixel included). A
    blur as two matrix products runs at BLAS speed, where a long 1-D convolution kernel does not."""
    kernel = gaussian_kernel(sigma, truncate, device)
    r = len(kernel) // 2
    rows = torch.arange(size, device=device).view(-1, 1).expand(size, len(kernel))
    taps = rows + torch.arange(-r, r + 1, device=device)
    if mode == "replicate":
        taps = taps.clamp(0, size - 1)
    else:
        for _ in range(2):  # a reach longer than the image folds back more than once
            taps = torch.where(taps < 0, -taps - 1, taps)
            taps = torch.where(taps >= size, 2 * size - taps - 1, taps)
        taps = taps.clamp(0, size - 1)
    matrix = torch.zeros(size, size, device=device)
    return matrix.index_put_((rows.reshape(-1), taps.reshape(-1)), kernel.repeat(size), accumulate=True)


def separable_blur(x: torch.Tensor, sigma_y: float, sigma_x: float, truncate: float, mode: str) -> torch.Tensor:
    """A Gaussian blur of every channel of (B, C, H, W), borders as `blur_matrix` handles them."""
    h, w = x.shape[-2:]
    return blur_matrix(h, sigma_y, truncate, mode, x.device) @ x @ blur_matrix(w, sigma_x, truncate, mode, x.device).T


def correlate(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Each channel of (B, C, H, W) correlated with a (B or 1, 1, k, k) kernel (k odd), the border padded by
    `mode` ('reflect': OpenCV's default, or 'replicate'), through the FFT: a 21 x 21 disk or a 41 px motion
    streak costs no more than a small kernel."""
    h, w = x.shape[-2:]
    k = kernel.shape[-1]
    padded = F.pad(x, (k // 2,) * 4, mode=mode if k // 2 < min(h, w) else "replicate")
    size = padded.shape[-2:]
    spectrum = torch.fft.rfft2(padded) * torch.fft.rfft2(kernel.flip(-1, -2), s=size)
    return torch.fft.irfft2(spectrum, s=size)[..., k - 1 : k - 1 + h, k - 1 : k - 1 + w]


def motion_kernel_blur(x: torch.Tensor, radius: float, sigma: float, angle: torch.Tensor) -> torch.Tensor:
    """The reference's motion blur: copies of each image shifted along a line at `angle` (degrees, one per image),
    edges repeated, weighted by a one-sided Gaussian of the distance travelled; as one kernel per image."""
    width = 2 * max(1, round(radius)) + 1
    weights = torch.exp(-(torch.arange(width, dtype=torch.float64) ** 2) / (2 * sigma**2))
    weights = (weights / weights.sum()).to(x.device)
    radians = torch.deg2rad(angle.double()).to(x.device).view(-1, 1)
    steps = torch.arange(width, dtype=torch.float64, device=x.device).view(1, -1)
    dy = -torch.ceil(steps * torch.sin(radians) - 0.5).long()  # (B, width): each copy's shift
    dx = -torch.ceil(steps * torch.cos(radians) - 0.5).long()
    inside = ((dy.abs() < x.shape[2]) & (dx.abs() < x.shape[3])).cummin(1).values  # the reference stops at the border
    reach = width - 1
    kernel = torch.zeros(len(x), 2 * reach + 1, 2 * reach + 1, dtype=torch.float64, device=x.device)
    images = torch.arange(len(x), device=x.device).view(-1, 1).expand_as(dy)
    kernel.index_put_((images, reach - dy, reach - dx), weights * inside, accumulate=True)
    return correlate(x, kernel.to(x.dtype).unsqueeze(1), "replicate")


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """The centre 1/factor of each image enlarged back to its size (linear interpolation, SciPy's zoom grid)."""
    h, w = x.shape[-2:]
    ch, cw = math.ceil(h / factor), math.ceil(w / factor)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top : top + ch, left : left + cw]
    size = (round(ch * factor), round(cw * factor))
    return F.interpolate(crop, size=size, mode="bilinear", align_corners=True)[..., :h, :w]


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    value, _ = x.max(1)
    delta = value - x.min(1).values
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    saturation = torch.where(value > 0, delta / torch.where(value > 0, value, torch.ones_like(value)), 0.0)
    hue = torch.where(r == value, (g - b) / safe, 0.0)  # where two channels share the maximum, the later wins
    hue = torch.where(g == value, 2 + (b - r) / safe, hue)
    hue = torch.where(b == value, 4 + (r - g) / safe, hue)
    hue = torch.where(delta > 0, (hue / 6) % 1, 0.0)
    return torch.stack((hue, saturation, value), 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `rgb_to_hsv`, in its closed form: channel n is v - v s clip(min(k, 4 - k), 0, 1) with
    k = (n + 6 h) mod 6 for n = 5, 3, 1 (red, green, blue)."""
    hue, saturation, value = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    k = (torch.tensor((5.0, 3.0, 1.0), device=x.device).view(1, 3, 1, 1) + 6 * hue) % 6
    return value - value * saturation * torch.minimum(k, 4 - k).clamp(0, 1)


def plasma_fractal(batch: int, size: int, decay: float, generator: torch.Generator, device) -> torch.Tensor:
    """(batch, size, size) diamond-square height maps in [0, 1], the reference's fog texture."""
    maps = torch.zeros(batch, size, size, device=device)
    step, wibble = size, 100.0

    def wibbled_mean(values: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(values.shape, generator=generator, device=device) * 2 - 1
        return values / 4 + wibble * wibble * noise

    while step >= 2:
        half = step // 2
        corners = maps[:, 0:size:step, 0:size:step]
        squares = corners + corners.roll(-1, 1)
        squares = squares + squares.roll(-1, 2)
        maps[:, half:size:step, half:size:step] = wibbled_mean(squares)
        centres = maps[:, half:size:step, half:size:step]
        corners = maps[:, 0:size:step, 0:size:step]
        maps[:, 0:size:step, half:size:step] = wibbled_mean(
            centres + centres.roll(1, 1) + corners + corners.roll(-1, 2)
        )
        maps[:, half:size:step, 0:size:step] = wibbled_mean(
            centres + centres.roll(1, 2) + corners + corners.roll(-1, 1)
        )
        step //= 2
        wibble /= decay
    maps = maps - maps.amin((1, 2), keepdim=True)
    return maps / maps.amax((1, 2), keepdim=True)


def box_resize_matrix(size_in: int, size_out: int, device) -> torch.Tensor:
    """(size_out, size_in) weights of Pillow's BOX filter: each output pixel is the mean of the input pixels whose
    centres fall in its footprint."""
    scale = size_in / size_out
    centres = torch.arange(size_in, dtype=torch.float64, device=device).unsqueeze(0) + 0.5
    start = torch.arange(size_out, dtype=torch.float64, device=device).unsqueeze(1) * scale
    inside = ((centres >= start) & (centres < start + scale)).double()
    return (inside / inside.sum(1, keepdim=True)).float()


def uniform(generator: torch.Generator, n: int, low: float, high: float, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


# ------------------------------------------------------------------------------------------- corruptions
def gaussian_noise(x, c, scale, g):
    return x + c * torch.randn(x.shape, generator=g, device=x.device)


def shot_noise(x, c, scale, g):
    return torch.poisson(x * c, generator=g) / c


def impulse_noise(x, c, scale, g):
    """Salt and pepper on a share `c` of the values (each channel of each pixel drawn alone), half of each."""
    flipped = torch.rand(x.shape, generator=g, device=x.device) < c
    salted = torch.rand(x.shape, generator=g, device=x.device) < 0.5
    return torch.where(flipped, salted.float(), x)


def gaussian_blur(x, c, scale, g):
    return separable_blur(x, c * scale, c * scale, 4.0, "replicate")


def defocus_blur(x, c, scale, g):
    """A disk of the given radius, antialiased by a small Gaussian, applied to each channel (borders mirrored)."""
    radius, alias = c[0] * scale, c[1]
    ksize = 3 if c[0] <= 8 else 5  # the reference's antialiasing kernel and grid, chosen on the published radius
    reach = max(math.ceil(radius), round(max(8, c[0]) * scale))
    grid = torch.arange(-reach, reach + 1, dtype=torch.float32, device=x.device)
    disk = ((grid.view(-1, 1) ** 2 + grid.view(1, -1) ** 2) <= radius**2).float()
    disk = disk / disk.sum()
    antialias = torch.exp(-((torch.arange(ksize, device=x.device) - ksize // 2) ** 2) / (2 * alias**2))
    antialias = antialias / antialias.sum()
    disk = F.conv2d(
        F.pad(disk.view(1, 1, *disk.shape), (ksize // 2,) * 4, mode="reflect"),
        (antialias.view(-1, 1) * antialias.view(1, -1)).view(1, 1, ksize, ksize),
    )
    return correlate(x, disk, "reflect")


def motion_blur(x, c, scale, g):
    angle = uniform(g, len(x), -45, 45, x.device)
    return motion_kernel_blur(x, c[0] * scale, max(c[1] * scale, 1e-3), angle)


def zoom_blur(x, c, scale, g):
    factors = np.arange(1, c[1], c[0]).tolist()  # the reference's zoom factors, float steps included
    return (x + sum(clipped_zoom(x, factor) for factor in factors)) / (len(factors) + 1)


def fog(x, c, scale, g):
    h, w = x.shape[-2:]
    size = 1 << (max(h, w) - 1).bit_length()
    peak = x.amax((1, 2, 3), keepdim=True)
    texture = plasma_fractal(len(x), size, c[1], g, x.device)[:, :h, :w].unsqueeze(1)
    return (x + c[0] * texture) * peak / (peak + c[0])


def snow(x, c, scale, g):
    """Flakes: thresholded Gaussian noise enlarged by the flake size, streaked by a motion blur in a random
    downward direction, added twice (the second turned 180 degrees) to the image brightened towards grey."""
    mean, std, flake, threshold, radius, sigma, keep = c
    b, _, h, w = x.shape
    zoom = max(flake * scale, 1.0)
    small = (math.ceil(h / zoom), math.ceil(w / zoom))
    layer = mean + std * torch.randn((b, 1, *small), generator=g, device=x.device)
    layer = F.interpolate(layer, size=(round(small[0] * zoom), round(small[1] * zoom)), mode="bilinear",
                          align_corners=True)[..., :h, :w]  # fmt: skip
    layer = torch.where(layer < threshold, 0.0, layer).clamp(0, 1)
    angle = uniform(g, b, -135, -45, x.device)
    layer = motion_kernel_blur(layer, radius * scale, max(sigma * scale, 1e-3), angle)
    layer = torch.round(layer * 255) / 255
    gray = (x * torch.tensor(GRAY, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = keep * x + (1 - keep) * torch.maximum(x, gray * 1.5 + 0.5)
    return x + layer + layer.flip(-1, -2)


def brightness(x, c, scale, g):
    hsv = rgb_to_hsv(x)
    hsv[:, 2] = (hsv[:, 2] + c).clamp(0, 1)
    return hsv_to_rgb(hsv)


def contrast(x, c, scale, g):
    means = x.mean((2, 3), keepdim=True)
    return (x - means) * c + means


def saturate(x, c, scale, g):
    hsv = rgb_to_hsv(x)
    hsv[:, 1] = (hsv[:, 1] * c[0] + c[1]).clamp(0, 1)
    return hsv_to_rgb(hsv)


def elastic_transform(x, c, scale, g):
    """Each pixel moved by a smooth random field (uniform noise of 0.5% of the side, blurred by a Gaussian of 1%
    of the side, times `c`), sampled bilinearly with mirrored borders. The field is drawn at the size the image
    would have at 224 px and resized with it (the reference's field at a small size is barely smoothed); blur and
    resize are one matrix product per axis."""
    b, _, h, w = x.shape
    fh, fw = round(h / scale), round(w / scale)
    reach = 0.005 * fh  # the reference uses the height for both axes
    noise = (torch.rand((b, 2, fh, fw), generator=g, device=x.device) * 2 - 1) * reach
    smooth_rows = resize_matrix(fh, h, x.device) @ blur_matrix(fh, 0.01 * fh, 3.0, "reflect", x.device)
    smooth_cols = resize_matrix(fw, w, x.device) @ blur_matrix(fw, 0.01 * fw, 3.0, "reflect", x.device)
    field = smooth_rows @ noise @ smooth_cols.T * (c * h / fh)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + field[:, 1]
    cols = torch.arange(w, device=x.device).view(1, 1, w) + field[:, 0]
    grid = torch.stack(((2 * cols + 1) / w - 1, (2 * rows + 1) / h - 1), -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def resize_matrix(size_in: int, size_out: int, device) -> torch.Tensor:
    """(size_out, size_in) weights of a linear resize (half-pixel centres), the identity at equal sizes."""
    eye = torch.eye(size_in, device=device).view(1, 1, size_in, size_in)
    return F.interpolate(eye, size=(size_out, size_in), mode="bilinear", align_corners=False)[0, 0]


def pixelate(x, c, scale, g):
    h, w = x.shape[-2:]
    small = (int(h * c), int(w * c))
    rows, cols = box_resize_matrix(h, small[0], x.device), box_resize_matrix(w, small[1], x.device)
    levels = torch.floor((x * 255) @ cols.T + 0.5)  # Pillow's two passes, widths first, each rounded half up
    x = torch.floor(rows @ levels + 0.5) / 255
    return F.interpolate(x, size=(h, w), mode="nearest-exact")


CORRUPTIONS = {
    c.name: c
    for c in (
        Corruption("gaussian_noise", "noise", (0.08, 0.12, 0.18, 0.26, 0.38), gaussian_noise),
        Corruption("shot_noise", "noise", (60, 25, 12, 5, 3), shot_noise),
        Corruption("impulse_noise", "noise", (0.03, 0.06, 0.09, 0.17, 0.27), impulse_noise),
        Corruption("defocus_blur", "blur", ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)), defocus_blur),
        Corruption("motion_blur", "blur", ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)), motion_blur),
        Corruption(  # (step, stop) of the zoom factors np.arange(1, stop, step)
            "zoom_blur", "blur", ((0.01, 1.11), (0.01, 1.16), (0.02, 1.21), (0.02, 1.26), (0.03, 1.31)), zoom_blur
        ),
        Corruption("gaussian_blur", "blur", (1, 2, 3, 4, 6), gaussian_blur),
        Corruption(
            "snow",
            "weather",
            (
                (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
                (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
                (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
                (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
            ),
            snow,
        ),
        Corruption("fog", "weather", ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)), fog),
        Corruption("brightness", "weather", (0.1, 0.2, 0.3, 0.4, 0.5), brightness),
        Corruption("contrast", "digital", (0.4, 0.3, 0.2, 0.1, 0.05), contrast),
        Corruption("saturate", "digital", ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)), saturate),
        Corruption("elastic_transform", "digital", (12.5, 16.25, 21.25, 25.0, 30.0), elastic_transform),
        Corruption("pixelate", "digital", (0.6, 0.5, 0.4, 0.3, 0.25), pixelate),
        Corruption("jpeg_compression", "digital", (25, 18, 15, 10, 7), None),
    )
}
FAMILIES = ("noise", "blur", "weather", "digital")
