"""WaveMix (Jeevan et al.), re-implemented so it runs anywhere torch does.

The reference package keeps its Haar filters as import-time globals on `cuda:0` and does not import under
numpy 2. Here the filters are non-persistent buffers, so `.to(device)`, DDP and `torch.compile` work, and the
module tree mirrors the reference exactly: the published ImageNet checkpoint loads key for key.
"""

from __future__ import annotations

import torch
from torch import nn


class HaarDWT(nn.Module):
    """One level of the 2-D Haar wavelet transform ('zero' padding, even sizes), as one grouped conv.

    Output per input channel, in the reference's order: LL, then the three detail bands
    (row-low/column-high, row-high/column-low, row-high/column-high).
    """

    def __init__(self) -> None:
        super().__init__()
        filters = (
            torch.tensor(
                [
                    [[1.0, 1.0], [1.0, 1.0]],
                    [[1.0, 1.0], [-1.0, -1.0]],
                    [[1.0, -1.0], [1.0, -1.0]],
                    [[1.0, -1.0], [-1.0, 1.0]],
                ]
            ).unsqueeze(1)
            / 2
        )
        self.register_buffer("filters", filters, persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (low, highs): low is (B, C, H/2, W/2), highs is (B, 3C, H/2, W/2), channel-major."""
        channels = x.shape[1]
        bands = nn.functional.conv2d(x, self.filters.to(x.dtype).repeat(channels, 1, 1, 1), stride=2, groups=channels)
        bands = bands.unflatten(1, (channels, 4))
        return bands[:, :, 0], bands[:, :, 1:].flatten(1, 2)


def _feedforward(in_dim: int, out_dim: int, mult: int, ff_channel: int, final_dim: int, dropout: float):
    """Mix channels at one scale, then upsample x2 (indices match the reference's Sequential)."""
    return nn.Sequential(
        nn.Conv2d(in_dim, final_dim * mult, 1),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Conv2d(final_dim * mult, ff_channel, 1),
        nn.ConvTranspose2d(ff_channel, out_dim, 4, stride=2, padding=1),
        nn.BatchNorm2d(out_dim),
    )


class Level3WaveBlock(nn.Module):
    """Three-level wavelet token mixer: decompose, mix coarse to fine, return at the input's size."""

    def __init__(self, *, mult: int, ff_channel: int, final_dim: int, dropout: float) -> None:
        super().__init__()
        half = final_dim // 2
        args = (mult, ff_channel, final_dim, dropout)
        self.feedforward1 = _feedforward(final_dim + half, final_dim, *args)
        self.feedforward2 = _feedforward(final_dim + half, half, *args)
        self.feedforward3 = _feedforward(final_dim, half, *args)
        self.reduction = nn.Conv2d(final_dim, final_dim // 4, 1)
        self.dwt = HaarDWT()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.reduction(x)
        scales = []
        for _ in range(3):
            low, highs = self.dwt(low)
            scales.append(torch.cat((low, highs), dim=1))
        x1, x2, x3 = scales
        x2 = self.feedforward2(torch.cat((x2, self.feedforward3(x3)), dim=1))
        return self.feedforward1(torch.cat((x1, x2), dim=1))


class WaveMix(nn.Module):
    """WaveMix classifier with the patchify stem; input height and width must be multiples of 32."""

    input_multiple = 32

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        depth: int = 16,
        mult: int = 2,
        ff_channel: int = 192,
        final_dim: int = 192,
        dropout: float = 0.5,
        patch_size: int = 4,
    ) -> None:
        super().__init__()
        # Registration order (layers, pool, conv) follows the reference, so state-dict keys come out identical.
        self.layers = nn.ModuleList(
            Level3WaveBlock(mult=mult, ff_channel=ff_channel, final_dim=final_dim, dropout=dropout)
            for _ in range(depth)
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(final_dim, num_classes))
        self.conv = nn.Sequential(
            nn.Conv2d(3, final_dim // 4, 3, 1, 1),
            nn.Conv2d(final_dim // 4, final_dim // 2, 3, 1, 1),
            nn.Conv2d(final_dim // 2, final_dim, patch_size, patch_size),
            nn.GELU(),
            nn.BatchNorm2d(final_dim),
        )

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.conv(img)
        for block in self.layers:
            x = block(x) + x
        return self.pool(x)


def wavemix_192_16(*, num_classes: int = 1000) -> WaveMix:
    """The ImageNet configuration of the benchmark: depth 16, width 192, level 3, patch 4 (27.9M params)."""
    return WaveMix(num_classes=num_classes, depth=16, mult=2, ff_channel=192, final_dim=192, dropout=0.5)
