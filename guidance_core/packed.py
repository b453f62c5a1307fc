"""The part of a sampler's latent that guidance acts on, for hosts that pack several latents into one tensor.

ComfyUI samples a nested latent (LTX-2: video and audio) as one tensor (B, 1, N): each latent flattened per batch
row and concatenated in order (comfy.utils.pack_latents; the model unpacks it by `latent_shapes`). Guidance on such
a latent changes one part (the video) and passes the others through: every model call, plain step and look-ahead
runs on the whole packed latent, as ComfyUI's own sampler would, while guesses, the update and the objective see
only the guided part in its own shape (B, C, T, h, w).

`WholeLatent` is the usual case: the part is the latent itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


class WholeLatent:
    """Guidance acts on the whole latent."""

    whole = True

    def get(self, x: Tensor) -> Tensor:
        return x

    def put(self, x: Tensor, part: Tensor) -> Tensor:
        return part


@dataclass(frozen=True)
class PackedPart:
    """Latent `index` of a packed latent (B, 1, N) that holds latents of `shapes` (each with its batch size first,
    as ComfyUI's `latent_shapes`), flattened per batch row and concatenated in that order."""

    shapes: tuple[tuple[int, ...], ...]
    index: int = 0
    names: tuple[str, ...] = ()

    whole = False

    def __post_init__(self):
        object.__setattr__(self, "shapes", tuple(tuple(int(d) for d in s) for s in self.shapes))
        if len(self.shapes) < 2:
            raise ValueError(f"a packed latent holds at least two latents, got shapes {list(self.shapes)}")
        if not 0 <= self.index < len(self.shapes):
            raise ValueError(f"part {self.index} of a packed latent of {len(self.shapes)} latents")

    @property
    def sizes(self) -> list[int]:
        """Elements per batch row of each latent."""
        return [math.prod(s[1:]) for s in self.shapes]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the guided part (batch size of the packed latent's)."""
        return self.shapes[self.index]

    def check(self, x: Tensor) -> None:
        """A clear error for a tensor that is not this packing."""
        if x.dim() != 3 or x.shape[1] != 1 or x.shape[2] != sum(self.sizes):
            raise ValueError(f"a packed latent of {self.describe()} has shape (B, 1, {sum(self.sizes)}), got "
                             f"{tuple(x.shape)}")

    def describe(self) -> str:
        names = self.names or tuple(f"latent {i}" for i in range(len(self.shapes)))
        return ", ".join(f"{n} {tuple(s)}" for n, s in zip(names, self.shapes))

    def unpack(self, x: Tensor) -> list[Tensor]:
        """Every latent of the packed `x`, each (B, *shape[1:])."""
        self.check(x)
        return [t.reshape(x.shape[0], *s[1:]) for t, s in zip(torch.split(x, self.sizes, dim=2), self.shapes)]

    def pack(self, latents: Sequence[Tensor]) -> Tensor:
        """The packed latent (B, 1, N) of `latents` (inverse of `unpack`)."""
        return torch.cat([t.reshape(t.shape[0], 1, -1) for t in latents], dim=2)

    def get(self, x: Tensor) -> Tensor:
        """The guided latent of the packed `x`."""
        return self.unpack(x)[self.index]

    def put(self, x: Tensor, part: Tensor) -> Tensor:
        """The packed `x` with its guided latent replaced by `part` (differentiable in `part`; the others kept)."""
        latents = self.unpack(x)
        if part.shape[1:] != latents[self.index].shape[1:] or part.shape[0] != x.shape[0]:
            raise ValueError(f"the guided part must have shape {tuple(latents[self.index].shape)}, got "
                             f"{tuple(part.shape)}")
        latents[self.index] = part
        return self.pack(latents)


def video_part(latent_shapes: Sequence[Sequence[int]] | None) -> PackedPart | WholeLatent:
    """What guidance acts on in a sampler's latent given the shapes of the latents packed into it (ComfyUI's
    `latent_shapes`): all of it for a single latent; for a nested one (LTX-2: video, audio) the video, the first
    latent, the others sampled with it unguided."""
    if latent_shapes is None or len(latent_shapes) < 2:
        return WholeLatent()
    if len(latent_shapes[0]) != 5:
        raise ValueError(f"the nested latent's first latent has shape {tuple(latent_shapes[0])}, not a video (B, C, T, "
                         "H, W): TITAN-Guide guides the video of an audio+video latent (LTX-2: LTXVConcatAVLatent "
                         "with the video latent first)")
    others = ("audio",) if len(latent_shapes) == 2 else tuple(f"latent {i}" for i in range(1, len(latent_shapes)))
    return PackedPart(tuple(tuple(s) for s in latent_shapes), 0, ("video", *others))
