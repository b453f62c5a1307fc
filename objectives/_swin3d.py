"""Video Swin Transformer (3-D) with DOVER's fragment-gated relative position bias.

Independent re-implementation of the technical branch of DOVER (Wu et al., ICCV 2023;
upstream class ``SwinTransformer3D`` in ``dover/models/swin_backbone.py``). Module and
parameter names follow the upstream layout exactly so that the official ``DOVER.pth``
loads with ``strict=True``; the computation reproduces the upstream inference path
(including its quirks, noted where they occur). Everything is written with ops that have
forward-mode AD formulas and without in-place updates, so ``torch.func.jvp`` passes through.
Window attention is ``F.scaled_dot_product_attention`` with the biases and the shift mask as one additive
mask, a few windows at a time in forward mode.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .function_transforms import on_device, outside_function_transforms, sdpa_usable

Triple = Tuple[int, int, int]

# Value that upstream uses to mask attention across shifted-window regions (not -inf).
SHIFT_MASK_VALUE = -100.0
# Bytes of one score-sized term (B x windows x heads x N x N) that window attention makes at a time in a pass
# that records no autograd graph (forward mode). 16 frames at 256x256 in guidance_core's forward-mode scope, live
# tensors counted on the CPU (benchmarks/forward_mode_memory.py): all 128 first-stage windows at once 1.97 GiB and
# 13,121 operator calls; 128 MiB 1.26 GiB and +3 % calls; 32 MiB 0.73 GiB and +39 % (the path is dispatch-bound;
# the decode chunk, 1.8 GiB, stays above it).
WINDOW_SCORE_BYTES = 128 * 2**20


def effective_window_and_shift(size: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> Tuple[Triple, Triple]:
    """Shrink the window to the feature size (and drop the shift) along axes where the feature is not larger."""
    use_window = list(window)
    use_shift = list(shift)
    for axis in range(3):
        if size[axis] <= window[axis]:
            use_window[axis] = size[axis]
            use_shift[axis] = 0
    return tuple(use_window), tuple(use_shift)


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """Split (B, D, H, W, C) into windows: (B * num_windows, Wd * Wh * Ww, C)."""
    batch, depth, height, width, channels = x.shape
    wd, wh, ww = window
    x = x.reshape(batch, depth // wd, wd, height // wh, wh, width // ww, ww, channels)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd * wh * ww, channels)


def window_reverse(windows: torch.Tensor, window: Sequence[int], batch: int, depth: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * num_windows, N, C) -> (B, D, H, W, C)."""
    wd, wh, ww = window
    x = windows.reshape(batch, depth // wd, height // wh, width // ww, wd, wh, ww, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, depth, height, width, -1)


def relative_position_index(window: Sequence[int]) -> torch.Tensor:
    """Index (N, N) into the (2Wd-1)(2Wh-1)(2Ww-1) bias table for every token pair of one window."""
    wd, wh, ww = window
    grid = torch.stack(torch.meshgrid(torch.arange(wd), torch.arange(wh), torch.arange(ww), indexing="ij"))
    flat = grid.flatten(1)  # 3, N
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0)  # N, N, 3 (query minus key)
    rel = rel + torch.tensor([wd - 1, wh - 1, ww - 1])
    strides = torch.tensor([(2 * wh - 1) * (2 * ww - 1), 2 * ww - 1, 1])
    return (rel * strides).sum(-1)


def _plain(function):
    """Run a constant-building function outside torch.func's wrapping, so its cached result is a plain tensor."""
    @functools.wraps(function)
    def run(*args):
        with outside_function_transforms():
            return function(*args)
    return run


@functools.lru_cache(maxsize=128)
@_plain
def _shift_mask_cpu(padded: Triple, window: Triple, shift: Triple) -> torch.Tensor:
    """(num_windows, N, N) additive mask: 0 inside one shifted-window region, -100 across regions."""
    labels = []
    for size, win, sh in zip(padded, window, shift):
        lab = torch.zeros(size, dtype=torch.long)
        if sh > 0:
            lab[size - win : size - sh] = 1
            lab[size - sh :] = 2
        labels.append(lab)
    region = labels[0][:, None, None] * 9 + labels[1][None, :, None] * 3 + labels[2][None, None, :]
    region_windows = window_partition(region[None, ..., None], window).squeeze(-1)  # nW, N
    differs = region_windows[:, None, :] != region_windows[:, :, None]
    return torch.where(differs, torch.tensor(SHIFT_MASK_VALUE, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))


@functools.lru_cache(maxsize=128)
@_plain
def _fragment_gate_cpu(padded: Triple, window: Triple, shift: Triple) -> torch.Tensor:
    """(num_windows, N, N) L1 distance between the fragment cells of each token pair (DOVER's gate).

    As upstream: the feature map is divided into a (1, Wh, Ww) grid of cells by nearest-neighbour
    interpolation of the cell coordinates (for the 224-px technical view that is exactly the 7x7
    fragment grid), rolled like the features, and windowed.
    """
    cells = torch.stack(
        torch.meshgrid(torch.arange(1), torch.arange(window[1]), torch.arange(window[2]), indexing="ij")
    ).to(torch.float32)  # 3, 1, Wh, Ww
    coords = F.interpolate(cells[None], size=padded, mode="nearest").long().permute(0, 2, 3, 4, 1)
    coords = torch.roll(coords, shifts=(-shift[0], -shift[1], -shift[2]), dims=(1, 2, 3))
    window_coords = window_partition(coords, window)  # nW, N, 3
    return (window_coords[:, None, :, :] - window_coords[:, :, None, :]).abs().sum(-1).to(torch.float64)


def _on(cached: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The cached CPU constant on the device/dtype of ``like`` (the device copy is cached too)."""
    return on_device(cached, like.device, like.dtype)


def linear_drop_rates(max_rate: float, count: int) -> list:
    """Stochastic-depth rates rising linearly from 0 to ``max_rate`` over ``count`` blocks (no tensors, meta-safe)."""
    if count <= 1:
        return [0.0] * count
    return [max_rate * i / (count - 1) for i in range(count)]


class StochasticDepth(nn.Module):
    """Per-sample residual drop (identity in eval mode; kept for fidelity with upstream training)."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Drop whole samples with probability ``drop_prob`` while training."""
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = torch.bernoulli(torch.full((x.shape[0],) + (1,) * (x.ndim - 1), keep, device=x.device, dtype=x.dtype))
        return x * mask / keep


HALF_DTYPES = (torch.float16, torch.bfloat16)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters) that normalises half-precision input in float32.

    On CUDA, the forward-mode derivative of ``layer_norm`` returns a float32 tangent for
    float16/bfloat16 input, which then clashes with half-precision weights in the next layer
    under ``torch.func.jvp``; computing in float32 and casting back keeps primal and tangent in
    the input dtype (and is more accurate).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Layer-normalise the last dimension."""
        if x.dtype not in HALF_DTYPES:
            return super().forward(x)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class Mlp(nn.Module):
    """Two-layer GELU MLP of a Swin block (keys ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply fc1 -> GELU -> fc2."""
        return self.fc2(self.act(self.fc1(x)))


class FragmentWindowAttention3D(nn.Module):
    """Windowed multi-head self-attention with relative position bias, optionally fragment-gated.

    With ``fragment_bias`` the bias for a token pair whose fragment cells differ by L1 distance
    ``g`` is ``g * relative_bias + (1 - g) * fragment_bias`` (upstream formula; ``g`` is an integer,
    0 inside one fragment). Without it the plain relative bias is added.
    """

    def __init__(self, dim: int, window: Triple, num_heads: int, fragment_bias: bool):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.window = tuple(window)
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        table_len = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_len, num_heads))
        if fragment_bias:
            self.fragment_position_bias_table = nn.Parameter(torch.zeros(table_len, num_heads))
        else:
            self.register_parameter("fragment_position_bias_table", None)
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _bias_from(self, table: torch.Tensor, num_tokens: int) -> torch.Tensor:
        # Upstream takes the top-left N x N block of the full-window index when the window shrinks.
        index = self.relative_position_index[:num_tokens, :num_tokens].reshape(-1)
        return table[index].reshape(num_tokens, num_tokens, -1).permute(2, 0, 1)  # nH, N, N

    def forward(self, windows: torch.Tensor, fragment_gate: torch.Tensor, shift_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Attend within each window; ``windows`` is (B * nW, N, C), gate/mask are (nW, N, N). The score-sized
        terms (scores, bias, softmax and, in a JVP, their tangents) are made for a few windows at a time, at
        most WINDOW_SCORE_BYTES per term, unless an autograd graph is recorded."""
        batch_windows, num_tokens, channels = windows.shape
        heads, num_windows = self.num_heads, fragment_gate.shape[0]
        qkv = self.qkv(windows).reshape(batch_windows // num_windows, num_windows, num_tokens, 3, heads,
                                        channels // heads).permute(3, 0, 1, 4, 2, 5)  # 3, B, nW, nH, N, d
        per_window = (batch_windows // num_windows) * heads * num_tokens ** 2 * windows.element_size()
        recording = torch.is_grad_enabled() and windows.requires_grad  # backprop keeps every chunk's terms anyway
        calls = 1 if recording else -(-num_windows // max(1, WINDOW_SCORE_BYTES // per_window))
        step = -(-num_windows // calls)
        parts = [self._attend(qkv[:, :, start:start + step], fragment_gate[start:start + step],
                              None if shift_mask is None else shift_mask[start:start + step])
                 for start in range(0, num_windows, step)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # B, nW, N, nH, d
        return self.proj(out.reshape(batch_windows, num_tokens, channels))

    def _attend(self, qkv: torch.Tensor, fragment_gate: torch.Tensor, shift_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Windows' attention: qkv (3, B, w, nH, N, d), gate/mask (w, N, N) -> (B, w, N, nH, d). The biases and
        the shift mask are one additive mask of scaled_dot_product_attention (in guidance_core's forward-mode
        scope its written-out rule takes it; with a backward, PyTorch's kernels)."""
        batch, windows, heads, num_tokens, head_dim = qkv.shape[1:]
        relative = self._bias_from(self.relative_position_bias_table, num_tokens)
        if self.fragment_position_bias_table is not None:
            fragment = self._bias_from(self.fragment_position_bias_table, num_tokens)
            gate = fragment_gate[:, None]  # w, 1, N, N
            mask = relative[None] * gate + fragment[None] * (1.0 - gate)  # w, nH, N, N
        else:
            mask = relative[None].expand(windows, -1, -1, -1)
        if shift_mask is not None:
            mask = mask + shift_mask[:, None]
        if batch > 1:
            mask = mask.expand(batch, -1, -1, -1, -1).reshape(batch * windows, heads, num_tokens, num_tokens)
        query, key, value = (t.reshape(batch * windows, heads, num_tokens, head_dim) for t in qkv)
        mask = mask.to(query.dtype)
        if sdpa_usable():
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=self.scale)
        else:  # torch.func.jvp around PyTorch's own SDPA, which has no forward rule
            out = torch.softmax((query * self.scale) @ key.transpose(-2, -1) + mask, dim=-1) @ value
        return out.reshape(batch, windows, heads, num_tokens, head_dim).transpose(-3, -2)


class SwinBlock3D(nn.Module):
    """Pre-norm Swin block: (shifted) window attention + MLP, both residual."""

    def __init__(self, dim: int, num_heads: int, window: Triple, shift: Triple, mlp_ratio: float, drop_path: float, fragment_bias: bool):
        super().__init__()
        self.window = tuple(window)
        self.shift = tuple(shift)
        self.norm1 = LayerNorm(dim)
        self.attn = FragmentWindowAttention3D(dim, self.window, num_heads, fragment_bias)
        self.drop_path = StochasticDepth(drop_path)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, depth, height, width, channels = x.shape
        window, shift = effective_window_and_shift((depth, height, width), self.window, self.shift)
        x = self.norm1(x)
        pad_d = (window[0] - depth % window[0]) % window[0]
        pad_h = (window[1] - height % window[1]) % window[1]
        pad_w = (window[2] - width % window[2]) % window[2]
        if pad_d or pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h, 0, pad_d))  # zero tokens after the norm, as upstream
        padded = (x.shape[1], x.shape[2], x.shape[3])
        shifted = any(s > 0 for s in shift)
        if shifted:
            x = torch.roll(x, shifts=(-shift[0], -shift[1], -shift[2]), dims=(1, 2, 3))
            mask = _on(_shift_mask_cpu(padded, window, shift), x)
        else:
            mask = None
        gate = _on(_fragment_gate_cpu(padded, window, shift), x)
        attended = self.attn(window_partition(x, window), gate, mask)
        x = window_reverse(attended, window, batch, *padded)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :depth, :height, :width, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, D, H, W, C) -> same shape."""
        x = x + self.drop_path(self._attention(x))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 spatial token merge: concat 4 neighbours -> LayerNorm(4C) -> Linear(4C, 2C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, D, H, W, C) -> (B, D, ceil(H/2), ceil(W/2), 2C)."""
        height, width = x.shape[2], x.shape[3]
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class SwinStage3D(nn.Module):
    """One stage: ``depth`` blocks alternating plain / shifted windows, then optional merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: Triple, mlp_ratio: float, drop_paths: Sequence[float], fragment_bias: bool, downsample: bool):
        super().__init__()
        half = tuple(w // 2 for w in window)
        self.blocks = nn.ModuleList(
            SwinBlock3D(dim, num_heads, window, (0, 0, 0) if i % 2 == 0 else half, mlp_ratio, drop_paths[i], fragment_bias)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, D, H, W) -> (B, C', D, H', W')."""
        x = x.permute(0, 2, 3, 4, 1)
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x.permute(0, 4, 1, 2, 3)


class PatchEmbed3D(nn.Module):
    """Non-overlapping 3-D patch projection (Conv3d, stride = kernel) followed by LayerNorm."""

    def __init__(self, patch: Triple, in_channels: int, embed_dim: int):
        super().__init__()
        self.patch = tuple(patch)
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=self.patch, stride=self.patch)
        self.norm = LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, T, H, W) -> (B, C, ceil(T/pt), ceil(H/ph), ceil(W/pw)); zero-pads the tail."""
        pt, ph, pw = self.patch
        depth, height, width = x.shape[2:]
        pad = (0, (pw - width % pw) % pw, 0, (ph - height % ph) % ph, 0, (pt - depth % pt) % pt)
        if any(pad):
            x = F.pad(x, pad)
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class SwinTransformer3D(nn.Module):
    """Swin3D backbone of DOVER's technical branch; returns the final normed feature map (B, C, D, H, W)."""

    def __init__(
        self,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: Triple = (8, 7, 7),
        patch_size: Triple = (2, 4, 4),
        fragment_biases: Sequence[bool] = (True, True, True, False),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        in_channels: int = 3,
    ):
        super().__init__()
        if not (len(depths) == len(num_heads) == len(fragment_biases)):
            raise ValueError("depths, num_heads and fragment_biases must have one entry per stage")
        self.window_size = tuple(window_size)
        self.patch_size = tuple(patch_size)
        self.patch_embed = PatchEmbed3D(self.patch_size, in_channels, embed_dim)
        rates = linear_drop_rates(drop_path_rate, sum(depths))
        self.layers = nn.ModuleList()
        start = 0
        for i, depth in enumerate(depths):
            self.layers.append(
                SwinStage3D(
                    dim=embed_dim * 2**i,
                    depth=depth,
                    num_heads=num_heads[i],
                    window=self.window_size,
                    mlp_ratio=mlp_ratio,
                    drop_paths=rates[start : start + depth],
                    fragment_bias=bool(fragment_biases[i]),
                    downsample=i < len(depths) - 1,
                )
            )
            start += depth
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = LayerNorm(self.num_features)
        self.apply(_init_linear_and_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: normalised clip (B, 3, T, H, W) -> features (B, C, T/2, H/32, W/32)."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


def _init_linear_and_norm(module: nn.Module) -> None:
    """Upstream initialisation: truncated-normal Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
