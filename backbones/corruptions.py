"""ImageNet-C's corruptions (Hendrycks and Dietterich, ICLR 2019) as batched torch operations on the device.

Each corruption takes a batch of uint8 images (B, 3, H, W) and returns it corrupted, as uint8 again (rounded, as a
saved image would be), at a severity from 1 to 5 with the published parameters. Those were chosen for 224 px
images. Parameters without a unit of length (noise levels, zoom and pixelation factors, colour factors, JPEG
quality, fog's texture, which spans the image) are used as published at every size, as the reference run on the
image itself. Those that are lengths in pixels of a 224 px image (blur radii and sigmas, the snow's flakes and
streaks, the elastic field) make a corruption at another size behave as the reference run at 224 px and resized
to that size (`Corruption.small_sizes`): blur kernels are drawn on the 224 px grid and resampled onto the
image's (`resample_kernel`); snow's flakes and the elastic field are drawn at the 224 px size and resized.
tests/test_corruptions_reference.py checks both against the reference package itself. Random draws come from
the `generator` given, so a seeded generator reproduces a corruption exactly.

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
    # below 224 px: 'native' (parameters without a unit of length, used as published, as the reference run on the
    # small image) or '224' (lengths in pixels of a 224 px image: as the reference run at 224 px, resized down)
    small_sizes: str = "native"


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
def gaussian_kernel(sigma: float, truncate: float = 4.0, device=None, factor: int = 1) -> torch.Tensor:
    """SciPy's 1-D Gaussian: radius round(truncate * sigma), normalised to sum 1; with `factor` > 1, drawn
    `factor` times finer and resampled (`resample_kernel`), so a sigma under a pixel still blurs."""
    sigma = sigma * factor
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return resample_kernel(kernel / kernel.sum(), factor).float()


def blur_matrix(size: int, sigma: float, truncate: float, mode: str, device, factor: int = 1) -> torch.Tensor:
    """(size, size) matrix M such that M @ v is v filtered by SciPy's Gaussian, the border handled as SciPy's
    'nearest' (`mode` 'replicate') or 'reflect' ('symmetric': mirrored about the edge, edge pixel included). A
    blur as two matrix products runs at BLAS speed, where a long 1-D convolution kernel does not."""
    kernel = gaussian_kernel(sigma, truncate, device, factor)
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


def separable_blur(x: torch.Tensor, sigma: float, truncate: float, mode: str, factor: int = 1) -> torch.Tensor:
    """A Gaussian blur of every channel of (B, C, H, W), borders as `blur_matrix` handles them."""
    h, w = x.shape[-2:]
    rows = blur_matrix(h, sigma, truncate, mode, x.device, factor)
    return rows @ x @ blur_matrix(w, sigma, truncate, mode, x.device, factor).T


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


def motion_kernels(
    count: int, radius: float, sigma: float, angle: torch.Tensor, reach_limit: tuple[int, int], device
) -> torch.Tensor:
    """The reference's motion blur as one (count, 1, k, k) float64 kernel per image: copies shifted along a line
    at `angle` (degrees, one per image), weighted by a one-sided Gaussian of the distance travelled, stopping
    where a shift would reach past an image of `reach_limit` (height, width) as the reference's loop does."""
    width = 2 * max(1, round(radius)) + 1
    weights = torch.exp(-(torch.arange(width, dtype=torch.float64) ** 2) / (2 * sigma**2))
    weights = (weights / weights.sum()).to(device)
    radians = torch.deg2rad(angle.double()).to(device).view(-1, 1)
    steps = torch.arange(width, dtype=torch.float64, device=device).view(1, -1)
    dy = -torch.ceil(steps * torch.sin(radians) - 0.5).long()  # (count, width): each copy's shift
    dx = -torch.ceil(steps * torch.cos(radians) - 0.5).long()
    inside = ((dy.abs() < reach_limit[0]) & (dx.abs() < reach_limit[1])).cummin(1).values
    reach = width - 1
    kernel = torch.zeros(count, 2 * reach + 1, 2 * reach + 1, dtype=torch.float64, device=device)
    images = torch.arange(count, device=device).view(-1, 1).expand_as(dy)
    kernel.index_put_((images, reach - dy, reach - dx), weights * inside, accumulate=True)
    return kernel.unsqueeze(1)


def motion_kernel_blur(x: torch.Tensor, radius: float, sigma: float, angle: torch.Tensor) -> torch.Tensor:
    """Each image of `x` streaked by its own motion kernel (`motion_kernels`), edges repeated."""
    kernels = motion_kernels(len(x), radius, sigma, angle, x.shape[-2:], x.device)
    return correlate(x, kernels.to(x.dtype), "replicate")


def fine_factor(scale: float) -> int:
    """How many pixels of the 224 px image one pixel of a smaller image stands for (rounded, at least 1)."""
    return max(1, round(1 / scale))


def resample_kernel(kernel: torch.Tensor, factor: int) -> torch.Tensor:
    """A blur kernel ((k,) or (B, 1, k, k)) drawn on a grid `factor` times finer than the image, resampled onto the
    image's grid with a Lanczos-3 window (each fine tap spread over the nearby whole-pixel offsets, weights summing
    to 1): the band-limited resampling that keeps what the blur does to the frequencies the image still holds. A
    blur narrower than a pixel still blurs by as much as it does to a 224 px image that is then resized down,
    where point sampling would lose it (an unchanged image) and area sampling would double it. `factor` 1
    returns the kernel as it is."""
    if factor == 1:
        return kernel
    fine_reach = kernel.shape[-1] // 2
    reach = math.ceil((fine_reach + 3 * factor - 1) / factor)
    fine = torch.arange(-fine_reach, fine_reach + 1, dtype=kernel.dtype, device=kernel.device) / factor
    coarse = torch.arange(-reach, reach + 1, dtype=kernel.dtype, device=kernel.device)
    d = (fine.view(1, -1) - coarse.view(-1, 1)).abs()
    weights = torch.where(d < 3, torch.sinc(d) * torch.sinc(d / 3), 0.0)
    weights = weights / weights.sum(0, keepdim=True)
    return weights @ kernel if kernel.dim() == 1 else weights @ kernel @ weights.T


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
    """SciPy's Gaussian filter of sigma `c` at 224 px, borders repeated; drawn on the 224 px grid below it."""
    factor = fine_factor(scale)
    return separable_blur(x, c * scale, 4.0, "replicate", factor)


def defocus_blur(x, c, scale, g):
    """The reference's disk (radius in 224 px pixels, antialiased by a small Gaussian), drawn on the 224 px grid
    and integrated over the image's pixels (`resample_kernel`), applied to each channel (borders mirrored)."""
    factor = fine_factor(scale)
    disk = reference_disk(c[0] * scale * factor, c[1], published_radius=c[0], device=x.device)
    return correlate(x, resample_kernel(disk, factor), "reflect")


def reference_disk(radius: float, alias: float, published_radius: float, device) -> torch.Tensor:
    """ImageNet-C's defocus kernel: a disk on a grid of at least +-8 px, normalised, blurred by a 3 x 3 (5 x 5
    past a published radius of 8) Gaussian of sigma `alias` with mirrored borders, then normalised again (the
    reference's blur leaves the mass a little off 1 where the disk touches the grid's edge)."""
    ksize = 3 if published_radius <= 8 else 5
    reach = max(8, math.ceil(radius))
    grid = torch.arange(-reach, reach + 1, dtype=torch.float64, device=device)
    disk = ((grid.view(-1, 1) ** 2 + grid.view(1, -1) ** 2) <= radius**2).double()
    disk = disk / disk.sum()
    antialias = torch.exp(-((torch.arange(ksize, device=device) - ksize // 2) ** 2) / (2 * alias**2)).double()
    antialias = antialias / antialias.sum()
    disk = F.conv2d(
        F.pad(disk.view(1, 1, *disk.shape), (ksize // 2,) * 4, mode="reflect"),
        (antialias.view(-1, 1) * antialias.view(1, -1)).view(1, 1, ksize, ksize),
    )
    return disk / disk.sum()


def motion_blur(x, c, scale, g):
    """The reference's streak drawn on the 224 px grid and integrated over the image's pixels."""
    angle = uniform(g, len(x), -45, 45, x.device)
    factor = fine_factor(scale)
    reach_limit = (x.shape[-2] * factor, x.shape[-1] * factor)
    kernels = motion_kernels(len(x), c[0] * scale * factor, max(c[1] * scale * factor, 1e-3), angle, reach_limit,
                             x.device)  # fmt: skip
    return correlate(x, resample_kernel(kernels, factor).to(x.dtype), "replicate")


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
    downward direction, added twice (the second turned 180 degrees) to the image brightened towards grey. The
    flakes are drawn and thresholded with the published parameters at the size the image would have at 224 px and
    resized to the image (antialiased), then streaked by the published streak resampled onto the image's grid, as
    snow at 224 px resized down would be: drawn at a small size, flakes a pixel wide would keep their full
    brightness instead of thinning into the streak."""
    mean, std, flake, threshold, radius, sigma, keep = c
    b, _, h, w = x.shape
    fine = (round(h / scale), round(w / scale))
    small = (math.ceil(fine[0] / flake), math.ceil(fine[1] / flake))
    layer = mean + std * torch.randn((b, 1, *small), generator=g, device=x.device)
    layer = F.interpolate(layer, size=(round(small[0] * flake), round(small[1] * flake)), mode="bilinear",
                          align_corners=True)[..., : fine[0], : fine[1]]  # fmt: skip
    layer = torch.where(layer < threshold, 0.0, layer).clamp(0, 1)
    if fine != (h, w):  # blurring and resizing are both linear: resize first, then streak at the image's size
        layer = F.interpolate(layer, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    angle = uniform(g, b, -135, -45, x.device)
    factor = fine_factor(scale)
    reach_limit = (h * factor, w * factor)
    kernels = motion_kernels(b, radius * scale * factor, sigma * scale * factor, angle, reach_limit, x.device)
    layer = correlate(layer, resample_kernel(kernels, factor).to(layer.dtype), "replicate")
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
        Corruption("defocus_blur", "blur", ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)), defocus_blur, "224"),
        Corruption("motion_blur", "blur", ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)), motion_blur, "224"),
        Corruption(  # (step, stop) of the zoom factors np.arange(1, stop, step)
            "zoom_blur", "blur", ((0.01, 1.11), (0.01, 1.16), (0.02, 1.21), (0.02, 1.26), (0.03, 1.31)), zoom_blur
        ),
        Corruption("gaussian_blur", "blur", (1, 2, 3, 4, 6), gaussian_blur, "224"),
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
            "224",
        ),
        Corruption("fog", "weather", ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)), fog),
        Corruption("brightness", "weather", (0.1, 0.2, 0.3, 0.4, 0.5), brightness),
        Corruption("contrast", "digital", (0.4, 0.3, 0.2, 0.1, 0.05), contrast),
        Corruption("saturate", "digital", ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)), saturate),
        Corruption("elastic_transform", "digital", (12.5, 16.25, 21.25, 25.0, 30.0), elastic_transform, "224"),
        Corruption("pixelate", "digital", (0.6, 0.5, 0.4, 0.3, 0.25), pixelate),
        Corruption("jpeg_compression", "digital", (25, 18, 15, 10, 7), None),
    )
}
