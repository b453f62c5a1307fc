"""ConvNeXt inflated to 3-D: the aesthetic branch of DOVER.

Independent re-implementation of upstream ``ConvNeXt3D`` (``dover/models/conv_backbone.py``):
a (2, 4, 4) patchify stem, depthwise (k, 7, 7) convolutions whose temporal length k follows the
inflation pattern "131" block by block, and (1, 2, 2) downsampling between stages. Parameter
names match the upstream state dict; no classification head (DOVER drops it).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ._swin3d import HALF_DTYPES, LayerNorm, StochasticDepth, linear_drop_rates


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over dim 1 of (B, C, T, H, W), computed with the upstream formula."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each position across channels, then scale and shift (half precision computed in float32)."""
        dtype = x.dtype
        if dtype in HALF_DTYPES:
            x = x.float()
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (self.weight.to(x.dtype).reshape(shape) * x + self.bias.to(x.dtype).reshape(shape)).to(dtype)


class ConvNeXtBlock3D(nn.Module):
    """Depthwise (k,7,7) conv -> LayerNorm -> Linear(4C) -> GELU -> Linear(C) -> layer scale, residual."""

    def __init__(self, dim: int, temporal_kernel: int, drop_path: float, layer_scale_init: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv3d(dim, dim, kernel_size=(temporal_kernel, 7, 7), padding=(temporal_kernel // 2, 3, 3), groups=dim)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init * torch.ones(dim))
        self.drop_path = StochasticDepth(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T, H, W) -> same shape."""
        y = self.dwconv(x).permute(0, 2, 3, 4, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + self.drop_path(y.permute(0, 4, 1, 2, 3))


class ConvNeXt3D(nn.Module):
    """Inflated ConvNeXt backbone; returns the final normed feature map (B, C, T/2, H/32, W/32)."""

    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        inflate_strategy: str = "131",
        drop_path_rate: float = 0.0,
        in_channels: int = 3,
    ):
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError("ConvNeXt3D needs exactly 4 stages (depths and dims of length 4)")
        if not inflate_strategy or any(c not in "123456789" for c in inflate_strategy):
            raise ValueError(f"inflate_strategy must be a string of temporal kernel sizes like '131', got {inflate_strategy!r}")
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv3d(in_channels, dims[0], kernel_size=(2, 4, 4), stride=(2, 4, 4)), ChannelsFirstLayerNorm(dims[0]))]
        )
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(ChannelsFirstLayerNorm(dims[i]), nn.Conv3d(dims[i], dims[i + 1], kernel_size=(1, 2, 2), stride=(1, 2, 2)))
            )
        rates = linear_drop_rates(drop_path_rate, sum(depths))
        self.stages = nn.ModuleList()
        start = 0
        for i in range(4):
            self.stages.append(
                nn.Sequential(
                    *[
                        ConvNeXtBlock3D(dims[i], int(inflate_strategy[j % len(inflate_strategy)]), rates[start + j])
                        for j in range(depths[i])
                    ]
                )
            )
            start += depths[i]
        self.norm = LayerNorm(dims[-1], eps=1e-6)
        self.num_features = dims[-1]
        self.apply(_init_conv_and_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: normalised clip (B, 3, T, H, W), T >= 2 -> features (B, C, T', H', W')."""
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


def _init_conv_and_linear(module: nn.Module) -> None:
    """Upstream initialisation: truncated-normal conv/linear weights, zero biases."""
    if isinstance(module, (nn.Conv3d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
