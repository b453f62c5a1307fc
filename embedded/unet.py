"""Small unconditional latent video UNet (AnimateDiff style) for the embedded world.

* Input layout as AnimateDiff inside ComfyUI: the frames of each clip are stacked in the batch
  dimension, ``x`` has shape (N * 16, 12, 16, 16) and ``timesteps`` shape (N * 16,) or ().
* 2-D conv ResBlocks with GroupNorm and a sinusoidal embedding of the discrete DDPM timestep
  (0..999, used as a float), spatial self-attention at the lowest resolution, and temporal
  self-attention over the 16 frames at every resolution (a "motion module").
* Predicts the noise eps on the standard SD1.5 DDPM schedule (scaled_linear betas
  0.00085..0.012, 1000 steps), so ComfyUI's ModelSamplingDiscrete + EPS apply unchanged.
* UNCONDITIONAL on purpose: the attribute (colour, shape, direction, speed) is chosen by guidance
  alone.  A class- or text-conditional model would make guidance redundant -- the demo could not
  show that the classifier guidance is what produces the requested attribute.
* Size: 2.80 M parameters with the default config, stored as float32 (11.2 MB), so the UNet and
  both classifiers (0.64 MB + 0.66 MB) stay well under the 20 MB budget for committed weights.
  One 16-frame clip costs about 5 GFLOP per forward pass (0.32 GFLOP per frame).
* Forward-mode AD friendly: attention is explicit matmul + softmax (no fused SDPA kernels) and no
  activation is modified in place, so ``torch.func.jvp`` passes through the whole network.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .codec import LATENT_CHANNELS, LATENT_SIZE
from .files import safetensors_metadata, safetensors_tensors
from .world import NUM_FRAMES

# SD1.5 DDPM schedule ("scaled_linear" in diffusers, "linear" in ComfyUI's make_beta_schedule).
NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
PREDICTION_TYPE = "eps"
LATENT_SHAPE = (LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)  # per frame; frames live in the batch


def alphas_cumprod(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Cumulative products of (1 - beta) of the SD1.5 schedule, shape (1000,)."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(dtype)


@dataclass(frozen=True)
class EmbeddedUNetConfig:
    """Architecture hyper-parameters; stored as JSON in the safetensors metadata."""

    in_channels: int = LATENT_CHANNELS
    base_channels: int = 48
    channel_multipliers: tuple[int, ...] = (1, 2, 2)
    res_blocks_per_level: int = 1
    attention_head_channels: int = 24
    norm_groups: int = 16
    num_frames: int = NUM_FRAMES
    temporal_attention_levels: tuple[bool, ...] = field(default=(True, True, True))

    def __post_init__(self) -> None:
        if len(self.temporal_attention_levels) != len(self.channel_multipliers):
            raise ValueError("temporal_attention_levels needs one flag per entry of channel_multipliers")
        for multiplier in self.channel_multipliers:
            channels = self.base_channels * multiplier
            if channels % self.norm_groups or channels % self.attention_head_channels:
                raise ValueError(f"channel count {channels} must be divisible by norm_groups={self.norm_groups} "
                                 f"and attention_head_channels={self.attention_head_channels}")

    @classmethod
    def from_json(cls, text: str) -> "EmbeddedUNetConfig":
        """Rebuild a config from its JSON form (tuples restored)."""
        raw = json.loads(text)
        raw["channel_multipliers"] = tuple(raw["channel_multipliers"])
        raw["temporal_attention_levels"] = tuple(raw["temporal_attention_levels"])
        return cls(**raw)

    def to_json(self) -> str:
        """JSON form of the config."""
        return json.dumps(asdict(self), sort_keys=True)


def sinusoidal_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoidal embedding of float positions (...,) -> (..., dim)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=positions.device) / half)
    angles = positions.to(torch.float32)[..., None] * frequencies
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention on (batch, heads, tokens, head_dim) tensors, written out for forward AD."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * (query.shape[-1] ** -0.5)
    return torch.matmul(scores.softmax(dim=-1), value)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the timestep embedding added in between."""

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embedding = nn.Linear(embedding_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.embedding(F.silu(embedding))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class _TokenAttention(nn.Module):
    """Shared parts of the spatial and temporal attention: GroupNorm, multi-head self-attention, zero-init output."""

    def __init__(self, channels: int, head_channels: int, groups: int) -> None:
        super().__init__()
        self.heads = channels // head_channels
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def attend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over (sequences, length, channels) tokens, heads merged back."""
        sequences, length, channels = tokens.shape
        q, k, v = self.qkv(tokens).reshape(sequences, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        return attention(q, k, v).transpose(1, 2).reshape(sequences, length, channels)


class SpatialAttention(_TokenAttention):
    """Self-attention over the H*W positions of each frame."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = self.norm(x).reshape(batch, channels, height * width).transpose(1, 2)
        mixed = self.attend(tokens)
        return x + self.out(mixed).transpose(1, 2).reshape(batch, channels, height, width)


class TemporalAttention(_TokenAttention):
    """Motion module: self-attention over the frames at every pixel, with sinusoidal frame positions."""

    def __init__(self, channels: int, head_channels: int, groups: int, num_frames: int) -> None:
        super().__init__(channels, head_channels, groups)
        self.num_frames = num_frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_frames, channels, height, width = x.shape
        clips = batch_frames // self.num_frames
        h = self.norm(x).reshape(clips, self.num_frames, channels, height * width)
        tokens = h.permute(0, 3, 1, 2).reshape(clips * height * width, self.num_frames, channels)
        positions = torch.arange(self.num_frames, device=x.device, dtype=torch.float32)
        tokens = tokens + sinusoidal_embedding(positions, channels).to(tokens.dtype)
        mixed = self.attend(tokens)
        mixed = self.out(mixed).reshape(clips, height * width, self.num_frames, channels)
        return x + mixed.permute(0, 2, 3, 1).reshape(batch_frames, channels, height, width)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Stage(nn.Module):
    """One ResBlock followed by optional spatial and temporal attention."""

    def __init__(self, in_channels: int, out_channels: int, config: EmbeddedUNetConfig, embedding_dim: int,
                 spatial: bool, temporal: bool) -> None:
        super().__init__()
        groups, head = config.norm_groups, config.attention_head_channels
        self.res = ResBlock(in_channels, out_channels, embedding_dim, groups)
        self.spatial = SpatialAttention(out_channels, head, groups) if spatial else None
        self.temporal = TemporalAttention(out_channels, head, groups, config.num_frames) if temporal else None

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        x = self.res(x, embedding)
        if self.spatial is not None:
            x = self.spatial(x)
        if self.temporal is not None:
            x = self.temporal(x)
        return x


class EmbeddedVideoUNet(nn.Module):
    """Unconditional eps-prediction video UNet on (N*16, 12, 16, 16) latents; see the module docstring."""

    def __init__(self, config: EmbeddedUNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or EmbeddedUNetConfig()
        base = config.base_channels
        embedding_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, embedding_dim), nn.SiLU(), nn.Linear(embedding_dim, embedding_dim))
        self.conv_in = nn.Conv2d(config.in_channels, base, 3, padding=1)
        levels = len(config.channel_multipliers)
        lowest = levels - 1

        self.down_stages = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skip_channels = [base]
        channels = base
        for level, multiplier in enumerate(config.channel_multipliers):
            out_channels = base * multiplier
            for _ in range(config.res_blocks_per_level):
                self.down_stages.append(_Stage(channels, out_channels, config, embedding_dim,
                                               spatial=level == lowest, temporal=config.temporal_attention_levels[level]))
                channels = out_channels
                skip_channels.append(channels)
            if level != lowest:
                self.downsamplers.append(Downsample(channels))
                skip_channels.append(channels)

        self.mid_first = _Stage(channels, channels, config, embedding_dim, spatial=True, temporal=True)
        self.mid_second = ResBlock(channels, channels, embedding_dim, config.norm_groups)

        self.up_stages = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for level in reversed(range(levels)):
            out_channels = base * config.channel_multipliers[level]
            for _ in range(config.res_blocks_per_level + 1):
                self.up_stages.append(_Stage(channels + skip_channels.pop(), out_channels, config, embedding_dim,
                                             spatial=level == lowest, temporal=config.temporal_attention_levels[level]))
                channels = out_channels
            if level != 0:
                self.upsamplers.append(Upsample(channels))

        self.norm_out = nn.GroupNorm(config.norm_groups, channels)
        self.conv_out = nn.Conv2d(channels, config.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _check_inputs(self, x: torch.Tensor, timesteps: torch.Tensor | float) -> torch.Tensor:
        frames = self.config.num_frames
        expected = (self.config.in_channels, LATENT_SIZE, LATENT_SIZE)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"EmbeddedVideoUNet expects x of shape (N*{frames}, {expected[0]}, {expected[1]}, "
                             f"{expected[2]}) with frames in the batch dimension, got {tuple(x.shape)}")
        if x.shape[0] == 0 or x.shape[0] % frames:
            raise ValueError(f"batch dimension {x.shape[0]} is not a positive multiple of num_frames={frames}: "
                             f"stack the {frames} frames of every clip in the batch dimension")
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        if timesteps.ndim != 1 or timesteps.shape[0] != x.shape[0]:
            raise ValueError(f"timesteps must be a scalar or have shape ({x.shape[0]},), got {tuple(timesteps.shape)}")
        return timesteps

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | float) -> torch.Tensor:
        """Predict the noise eps for latents x (N*16, 12, 16, 16) at DDPM timesteps (0..999)."""
        timesteps = self._check_inputs(x, timesteps)
        embedding = self.time_mlp(sinusoidal_embedding(timesteps, self.config.base_channels).to(x.dtype))
        h = self.conv_in(x)
        skips = [h]
        stages = iter(self.down_stages)
        downsamplers = iter(self.downsamplers)
        levels = len(self.config.channel_multipliers)
        for level in range(levels):
            for _ in range(self.config.res_blocks_per_level):
                h = next(stages)(h, embedding)
                skips.append(h)
            if level != levels - 1:
                h = next(downsamplers)(h)
                skips.append(h)
        h = self.mid_second(self.mid_first(h, embedding), embedding)
        stages = iter(self.up_stages)
        upsamplers = iter(self.upsamplers)
        for level in reversed(range(levels)):
            for _ in range(self.config.res_blocks_per_level + 1):
                h = next(stages)(torch.cat([h, skips.pop()], dim=1), embedding)
            if level != 0:
                h = next(upsamplers)(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


def save_embedded_unet(model: EmbeddedVideoUNet, path: str | Path, extra_metadata: dict[str, str] | None = None) -> None:
    """Save weights (float32) and the config to a safetensors file."""
    from safetensors.torch import save_file

    metadata = {"format": "titan_guide.embedded_unet", "config": model.config.to_json(),
                "prediction_type": PREDICTION_TYPE, "schedule": f"scaled_linear {BETA_START} {BETA_END} {NUM_TRAIN_TIMESTEPS}"}
    metadata.update(extra_metadata or {})
    tensors = {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)


def load_embedded_unet(path: str | Path, device: torch.device | str = "cpu") -> EmbeddedVideoUNet:
    """Load the committed embedded UNet (strictly) from a safetensors file, in eval mode."""
    path = Path(path)
    where = ("the committed file lives in models/titan_guide/embedded_unet.safetensors (restore it from the "
             "repository or re-create it with scripts/train_embedded.py)")
    metadata = safetensors_metadata(path, "embedded UNet", where)
    if metadata.get("format") != "titan_guide.embedded_unet" or "config" not in metadata:
        raise ValueError(f"{path} is not an embedded UNet file (metadata format={metadata.get('format')!r}); "
                         "expected models/titan_guide/embedded_unet.safetensors written by scripts/train_embedded.py")
    model = EmbeddedVideoUNet(EmbeddedUNetConfig.from_json(metadata["config"]))
    try:
        model.load_state_dict(safetensors_tensors(path, "embedded UNet", where), strict=True)
    except RuntimeError as error:
        raise ValueError(f"weights in {path} do not match the EmbeddedVideoUNet architecture: {error}") from error
    return model.to(device).eval()


class EmbeddedDiffusionModel(nn.Module):
    """The embedded UNet behind a host's diffusion_model call signature (ComfyUI's BaseModel); conditioning is
    ignored."""

    def __init__(self, unet: EmbeddedVideoUNet):
        super().__init__()
        self.unet = unet

    @property
    def dtype(self) -> torch.dtype:
        """Weight dtype (BaseModel.get_dtype reads it)."""
        return next(self.unet.parameters()).dtype

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kwargs):
        """eps for x (N*16, 12, 16, 16) at DDPM timesteps; context and extra conds are unused."""
        return self.unet(x, timesteps.to(x.dtype))
