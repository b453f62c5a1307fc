"""Audio-video alignment objective with ImageBind (paper: multimodal alignment task).

Uses the unmodified ImageBind code from the ``imagebind-unofficial`` package.
Loss per video: ``audio_weight * (1 - cos(v, a)) + text_weight * (1 - cos(v, t))``
(i.e. negative cosine similarity shifted by a constant), where ``v`` is the
video's vision embedding, ``a`` the audio embedding of the audio span the video
covers and ``t`` an optional ImageBind text embedding.

Vision clips: ImageBind sees 2-frame clips (B, S, 3, 2, 224, 224): frames are
scaled (shortest side 224, bilinear), CLIP-normalised and cut into 3 spatial
crops as in ImageBind's video loader; the vision embedding is the mean of the
clip embeddings. Which frames form clips is set by ``vision_clips`` (see
``preprocess.imagebind_clip_frame_pairs``): "pairs" (default, every frame gets
gradient) or "official" (ImageBind's 5 clips of 2 s, first and last frame each).
Identical clips/crops (e.g. square frames give 3 equal crops) are computed once
and weighted by multiplicity, which leaves the mean unchanged.

Audio: a video of F frames at ``fps`` covers F / fps seconds starting at
``audio_start_s`` of the audio. That span is cut like ImageBind's audio loader
(3 clips of 2 s from ConstantClipsPerVideoSampler, 128-bin kaldi fbank, 204
frames, normalised). Multi-channel audio is averaged to mono (the official
loader's fbank reads only the first channel); other sample rates are resampled
to 16 kHz. Audio shorter than ``audio_start_s + F / fps`` is refused. The audio
embedding is a constant target: it is computed once per frame count, dtype and
device, without gradient and outside any forward-mode pass (``prepare`` or the
first call, see ``objectives.base.ConstantTargets``), so a JVP runs only the
vision tower.

Frame subsets (``frame_indices``, the sampled-gradient guess): the input holds
frames ``frame_indices`` of a video of ``prepare(num_frames)`` frames. The loss
is the full video's loss with every missing frame replaced by the nearest shown
frame (the earlier one on ties): the same audio span and the same clips, each
clip frame read from its nearest shown frame. A subset covering every frame
gives exactly the full-video loss.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import math
import operator
import re
import sys
import types
from fractions import Fraction
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    ConstantTargets,
    FrameIndices,
    VideoObjective,
    forward_ad_safe_attention,
    freeze,
    load_state_dict_checked,
    load_weights_file,
    random_init_skipped,
    subset_frame_indices,
)
from .function_transforms import constant
from .preprocess import (
    IMAGEBIND_AUDIO_CLIPS_PER_VIDEO,
    IMAGEBIND_IMAGE_SIZE,
    IMAGEBIND_NUM_MEL_BINS,
    IMAGEBIND_AUDIO_TARGET_LENGTH,
    IMAGEBIND_VIDEO_CLIPS_PER_VIDEO,
    audio_to_mono,
    count_unique,
    imagebind_audio_clips,
    imagebind_clip_frame_pairs,
    imagebind_crop_offsets,
    imagebind_vision_frames,
)

IMAGEBIND_HINT = (
    "Download imagebind_huge.pth (4.8 GB) from https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth "
    "(license CC-BY-NC-SA 4.0) and save it as ComfyUI/models/imagebind/imagebind_huge.pth."
)
MODALITIES = ("vision", "text", "audio", "depth", "thermal", "imu")
# imagebind_huge's head counts; shapes do not reveal them.
HUGE_NUM_HEADS = {"vision": 16, "text": 16, "audio": 12, "depth": 8, "thermal": 12, "imu": 8}
EXPECTED_LAYOUT = "an ImageBind state dict (keys modality_preprocessors.*, modality_trunks.*, modality_heads.*)"


def _resource_filename(package: str, resource: str) -> str:
    """Path of a data file shipped inside an installed package."""
    return str(importlib.resources.files(package) / resource)


def import_imagebind_model():
    """Import ``imagebind.models.imagebind_model`` (the package pulls in pytorchvideo 0.1.5)."""
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        # imagebind/data.py imports pkg_resources (deprecated, dropped by newer setuptools) only for resource_filename.
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = _resource_filename
        sys.modules.setdefault("pkg_resources", shim)
    legacy_name = "torchvision.transforms.functional_tensor"
    if legacy_name not in sys.modules and importlib.util.find_spec(legacy_name) is None:
        # pytorchvideo 0.1.5 imports torchvision.transforms.functional_tensor, removed in torchvision 0.17;
        # the functions it needs now live in torchvision.transforms.functional.
        import torchvision.transforms.functional

        sys.modules[legacy_name] = torchvision.transforms.functional
    try:
        from imagebind.models import imagebind_model
    except ImportError as error:
        raise ImportError(
            f"ImageBind is not importable ({error}); install imagebind-unofficial==0.1.1 (with --no-deps) and its "
            "runtime dependencies (pytorchvideo==0.1.5 --no-deps, timm, ftfy, regex, iopath, einops)."
        ) from error
    return imagebind_model


def _count_blocks(state_dict: dict, modality: str) -> int:
    """Number of transformer blocks of one modality trunk in an ImageBind state dict."""
    pattern = re.compile(rf"modality_trunks\.{modality}\.blocks\.(\d+)\.")
    ids = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    if not ids or ids != set(range(len(ids))):
        raise ValueError(f"{EXPECTED_LAYOUT} expected; the {modality} trunk blocks are missing or not contiguous.")
    return len(ids)


def imagebind_config_from_state_dict(
    state_dict: dict, num_heads: Optional[Mapping[str, int]] = None, audio_stride: Optional[int] = None
) -> dict:
    """``ImageBindModel`` keyword arguments inferred from the tensor shapes of a state dict.

    Head counts are not visible in shapes: they default to imagebind_huge's
    (override per modality with ``num_heads``). The audio stride is solved
    from the number of audio patches; pass ``audio_stride`` if ambiguous.
    """
    try:
        vision_stem = state_dict["modality_preprocessors.vision.rgbt_stem.proj.1.weight"]
        vision_tokens = state_dict["modality_preprocessors.vision.pos_embedding_helper.pos_embed"].shape[1]
        audio_stem = state_dict["modality_preprocessors.audio.rgbt_stem.proj.weight"]
        audio_tokens = state_dict["modality_preprocessors.audio.pos_embedding_helper.pos_embed"].shape[1]
        text_embedding = state_dict["modality_preprocessors.text.token_embedding.weight"]
        depth_stem = state_dict["modality_preprocessors.depth.depth_stem.proj.weight"]
        thermal_stem = state_dict["modality_preprocessors.thermal.rgbt_stem.proj.weight"]
        imu_stem = state_dict["modality_preprocessors.imu.imu_stem.proj.weight"]
        out_embed_dim = state_dict["modality_heads.vision.2.weight"].shape[0]
    except KeyError as error:
        raise ValueError(f"not {EXPECTED_LAYOUT}: key {error} is missing.") from None
    kernel_t, kernel_h, kernel_w = vision_stem.shape[2:]
    spatial_patches = (IMAGEBIND_IMAGE_SIZE // kernel_h) * (IMAGEBIND_IMAGE_SIZE // kernel_w)
    if (vision_tokens - 1) % spatial_patches:
        raise ValueError(
            f"vision position embedding ({vision_tokens} tokens) does not fit kernel {tuple(vision_stem.shape[2:])}."
        )
    audio_kernel = audio_stem.shape[-1]
    if audio_stride is None:
        strides = [
            stride
            for stride in range(1, audio_kernel + 1)
            if ((IMAGEBIND_NUM_MEL_BINS - audio_kernel) // stride + 1)
            * ((IMAGEBIND_AUDIO_TARGET_LENGTH - audio_kernel) // stride + 1)
            == audio_tokens - 1
        ]
        if len(strides) != 1:
            raise ValueError(
                f"cannot determine the audio patch stride from {audio_tokens - 1} patches (candidates {strides}); "
                "pass audio_stride."
            )
        audio_stride = strides[0]
    heads = dict(HUGE_NUM_HEADS)
    heads.update(num_heads or {})
    config = dict(
        video_frames=kernel_t * ((vision_tokens - 1) // spatial_patches),
        kernel_size=(kernel_t, kernel_h, kernel_w),
        audio_kernel_size=audio_kernel,
        audio_stride=audio_stride,
        out_embed_dim=out_embed_dim,
        vision_embed_dim=vision_stem.shape[0],
        audio_embed_dim=audio_stem.shape[0],
        text_embed_dim=text_embedding.shape[1],
        depth_embed_dim=depth_stem.shape[0],
        depth_kernel_size=depth_stem.shape[-1],
        thermal_embed_dim=thermal_stem.shape[0],
        thermal_kernel_size=thermal_stem.shape[-1],
        imu_embed_dim=imu_stem.shape[0],
    )
    for modality in MODALITIES:
        width = config[f"{modality}_embed_dim"]
        if heads[modality] < 1 or width % heads[modality]:
            raise ValueError(
                f"{modality} width {width} is not divisible by {heads[modality]} heads; "
                f"pass num_heads={{'{modality}': ...}}."
            )
        config[f"{modality}_num_blocks"] = _count_blocks(state_dict, modality)
        config[f"{modality}_num_heads"] = heads[modality]
    return config


def imagebind_from_state_dict(
    state_dict: dict,
    num_heads: Optional[Mapping[str, int]] = None,
    modalities: Sequence[str] = ("vision", "audio", "text"),
    audio_stride: Optional[int] = None,
    source: str = "state dict",
) -> nn.Module:
    """Build the real ``ImageBindModel`` from inferred sizes, load strictly, keep only ``modalities``, freeze."""
    unknown = set(modalities) - set(MODALITIES)
    if unknown or "vision" not in modalities:
        raise ValueError(f"modalities must include 'vision' and be drawn from {MODALITIES}, got {tuple(modalities)}.")
    imagebind_model = import_imagebind_model()
    config = imagebind_config_from_state_dict(state_dict, num_heads, audio_stride)
    with random_init_skipped():  # every weight is loaded strictly next
        model = imagebind_model.ImageBindModel(**config)
    load_state_dict_checked(model, state_dict, source, f"ImageBindModel (expected {EXPECTED_LAYOUT})")
    for modality in MODALITIES:
        if modality not in modalities:  # unused towers only cost memory
            for container in (
                model.modality_preprocessors,
                model.modality_trunks,
                model.modality_heads,
                model.modality_postprocessors,
            ):
                del container[modality]
    return freeze(model)


def load_imagebind(
    path,
    num_heads: Optional[Mapping[str, int]] = None,
    modalities: Sequence[str] = ("vision", "audio", "text"),
    dtype: torch.dtype = torch.float32,
    device="cpu",
    audio_stride: Optional[int] = None,
) -> nn.Module:
    """Load ``imagebind_huge.pth`` (or any ImageBind state dict) with weights_only=True into the real model class."""
    state_dict = load_weights_file(path, "ImageBind", IMAGEBIND_HINT)
    model = imagebind_from_state_dict(state_dict, num_heads, modalities, audio_stride, source=f"'{path}'")
    return model.to(device=device, dtype=dtype)


def imagebind_tokenize(texts: Sequence[str]) -> torch.Tensor:
    """ImageBind text tokens (T, 77) with the BPE vocabulary shipped in the imagebind package."""
    import_imagebind_model()
    from imagebind.models.multimodal_preprocessors import SimpleTokenizer

    vocab = importlib.resources.files("imagebind") / "bpe" / "bpe_simple_vocab_16e6.txt.gz"
    if not vocab.is_file():
        raise FileNotFoundError(f"ImageBind's BPE vocabulary is missing at {vocab}; reinstall imagebind-unofficial.")
    tokenizer = SimpleTokenizer(bpe_path=str(vocab))
    return torch.stack([tokenizer(text) for text in texts])


def _model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """Parameter dtype and device of a model."""
    parameter = next(model.parameters())
    return parameter.dtype, parameter.device


class ImageBindAudioLoss(VideoObjective):
    """ImageBind audio(-text)-to-video alignment loss (see the module docstring for the exact pipeline).

    ``model``: from ``load_imagebind`` (vision and audio towers, text tower for
    ``text``). ``audio``: ComfyUI AUDIO dict; batch 1 applies to every video,
    batch B pairs audio b with video b. ``fps``: frame rate of the videos that
    will be passed (maps frames to audio time). ``clips_per_chunk`` bounds how
    many 2-frame clips go through the vision tower at once. ``num_frames``
    (optional) calls ``prepare(num_frames)``: it precomputes the audio embedding
    for that video length and sets the full length frame subsets refer to;
    otherwise the first call computes and caches the embedding (outside any
    ``torch.func`` transform around it).
    """

    needs = frozenset({"audio", "fps"})
    accepts_frame_subsets = True

    def __init__(
        self,
        model: nn.Module,
        audio: Mapping,
        fps: float,
        text=None,
        audio_weight: float = 1.0,
        text_weight: float = 1.0,
        audio_start_s: float = 0.0,
        vision_clips: str = "pairs",
        spatial_crops: int = 3,
        audio_clips_per_video: int = IMAGEBIND_AUDIO_CLIPS_PER_VIDEO,
        video_clips_per_video: int = IMAGEBIND_VIDEO_CLIPS_PER_VIDEO,
        clips_per_chunk: Optional[int] = None,
        num_frames: Optional[int] = None,
    ):
        super().__init__()
        trunks = getattr(model, "modality_trunks", None)
        if trunks is None or "vision" not in trunks or "audio" not in trunks:
            raise ValueError("model must be an ImageBindModel with vision and audio towers (use load_imagebind).")
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"fps must be a positive number, got {fps!r}.")
        if not (isinstance(audio_start_s, (int, float)) and math.isfinite(audio_start_s) and audio_start_s >= 0):
            raise ValueError(f"audio_start_s must be a number >= 0, got {audio_start_s!r}.")
        for label, weight in (("audio_weight", audio_weight), ("text_weight", text_weight)):
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
                raise ValueError(f"{label} must be a finite number >= 0, got {weight!r}.")
        if vision_clips not in ("pairs", "official"):
            raise ValueError(f"vision_clips must be 'pairs' or 'official', got {vision_clips!r}.")
        if spatial_crops not in (1, 3):
            raise ValueError(f"spatial_crops must be 1 or 3, got {spatial_crops}.")
        if audio_clips_per_video < 1 or video_clips_per_video < 1:
            raise ValueError("audio_clips_per_video and video_clips_per_video must be >= 1.")
        if clips_per_chunk is not None and clips_per_chunk < 1:
            raise ValueError(f"clips_per_chunk must be >= 1 or None, got {clips_per_chunk}.")
        self.model = freeze(model)
        self.fps = fps
        self.audio_start_s = Fraction(audio_start_s).limit_denominator(1_000_000)
        self.audio_weight = float(audio_weight)
        self.text_weight = float(text_weight) if text is not None else 0.0
        self.vision_clips = vision_clips
        self.spatial_crops = spatial_crops
        self.audio_clips_per_video = audio_clips_per_video
        self.video_clips_per_video = video_clips_per_video
        self.clips_per_chunk = clips_per_chunk
        self.register_buffer("mono_audio", audio_to_mono(audio), persistent=False)
        self.audio_targets = ConstantTargets()  # (frames, dtype, device) -> normalised (A, D)
        self.video_frames: Optional[int] = None  # full video length, set by prepare(); frame subsets refer to it
        self.register_buffer("text_embedding", None)
        if text is not None:
            if "text" not in trunks:
                raise ValueError("a text target needs the ImageBind text tower; load with modalities including 'text'.")
            prompts = [text] if isinstance(text, str) else list(text)
            if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
                raise ValueError("text must be a non-empty string or a list of non-empty strings.")
            _, device = _model_dtype_device(self.model)
            with torch.no_grad(), forward_ad_safe_attention():
                embeds = self.model({"text": imagebind_tokenize(prompts).to(device)})["text"]
            self.text_embedding = F.normalize(F.normalize(embeds, dim=-1).mean(0), dim=0)
        if num_frames is not None:
            self.prepare(num_frames)

    def video_duration(self, num_frames: int) -> Fraction:
        """Seconds covered by ``num_frames`` frames at this loss's fps."""
        return Fraction(num_frames) / Fraction(self.fps)

    def audio_embedding(self, num_frames: int) -> torch.Tensor:
        """Normalised audio embeddings (A, D) of the span a ``num_frames`` video covers (computed once, cached)."""
        dtype, device = _model_dtype_device(self.model)
        return self.audio_targets.get((num_frames, dtype, device),
                                      lambda: self._compute_audio_embedding(num_frames, dtype, device))

    def _compute_audio_embedding(self, num_frames: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Run the audio tower on the mel clips of the span a ``num_frames`` video covers."""
        duration = self.video_duration(num_frames)
        mels = torch.stack(
            [
                imagebind_audio_clips(mono, self.audio_start_s, duration, self.audio_clips_per_video)
                for mono in self.mono_audio
            ]
        )
        with forward_ad_safe_attention():
            embeds = self.model({"audio": mels.to(device=device, dtype=dtype)})["audio"]
        return F.normalize(embeds, dim=-1)

    def prepare(self, num_frames: int) -> None:
        """Set the full video length to ``num_frames`` and compute its audio embedding now (before guidance)."""
        try:
            num_frames = operator.index(num_frames) if not isinstance(num_frames, bool) else None
        except TypeError:
            num_frames = None
        if num_frames is None or num_frames < 1:
            raise ValueError("num_frames must be a whole number >= 1 (the frame count of the full video).")
        self.audio_embedding(num_frames)
        dtype, device = _model_dtype_device(self.model)
        if (num_frames, dtype, device) not in self.audio_targets:
            raise RuntimeError("this torch cannot suspend torch.func transforms; call prepare() outside them so the "
                               "audio embedding can be cached.")
        self.video_frames = num_frames

    def clip_frame_pairs(self, num_frames: int, frame_indices: Optional[Sequence[int]] = None) -> list[tuple[int, int]]:
        """2-frame clips as positions in the input: the full video's clips, each frame mapped to the nearest shown one.

        Without ``frame_indices`` the input is the whole ``num_frames``-frame video and positions are frames.
        """
        pairs = imagebind_clip_frame_pairs(num_frames, self.fps, self.vision_clips, self.video_clips_per_video)
        if frame_indices is None:
            return pairs
        shown = list(frame_indices)
        # position of the nearest shown frame for every frame; min() keeps the first: the earlier frame on ties
        nearest = [min(range(len(shown)), key=lambda slot: abs(shown[slot] - frame)) for frame in range(num_frames)]
        return [(nearest[first], nearest[last]) for first, last in pairs]

    def vision_embedding(self, video: torch.Tensor, frame_indices: FrameIndices = None) -> torch.Tensor:
        """Mean ImageBind vision embedding (B, D) over the video's 2-frame clips and spatial crops.

        With ``frame_indices`` the video holds those frames of the full ``video_frames``-frame video.
        """
        batch, num_frames = video.shape[:2]
        full_frames, frame_indices = self._full_length(num_frames, frame_indices)
        pairs, pair_counts = count_unique(self.clip_frame_pairs(full_frames, frame_indices))
        frame_ids = sorted({index for pair in pairs for index in pair})
        position = {frame: slot for slot, frame in enumerate(frame_ids)}
        picked = video.index_select(1, constant(frame_ids, video.device, torch.long))  # no host copy per call
        frames = imagebind_vision_frames(picked.reshape(-1, *picked.shape[2:]))
        frames = frames.reshape(batch, len(frame_ids), *frames.shape[1:])
        clips = torch.stack(
            [torch.stack([frames[:, position[first]], frames[:, position[last]]], dim=2) for first, last in pairs],
            dim=1,
        )  # (B, P, 3, 2, h, w)
        offsets, crop_counts = count_unique(
            imagebind_crop_offsets(clips.shape[-2], clips.shape[-1], IMAGEBIND_IMAGE_SIZE, self.spatial_crops)
        )
        size = IMAGEBIND_IMAGE_SIZE
        crops = torch.stack([clips[..., top : top + size, left : left + size] for top, left in offsets], dim=2)
        dtype, _ = _model_dtype_device(self.model)
        flat = crops.reshape(-1, 1, *crops.shape[3:]).to(dtype)  # (B*P*C, S=1, 3, 2, 224, 224)
        chunk = self.clips_per_chunk or flat.shape[0]
        with forward_ad_safe_attention():
            embeds = torch.cat(
                [
                    self.model({"vision": flat[start : start + chunk]})["vision"]
                    for start in range(0, flat.shape[0], chunk)
                ]
            )
        embeds = embeds.reshape(batch, len(pairs) * len(offsets), -1)
        weights = constant([pair_count * crop_count for pair_count in pair_counts for crop_count in crop_counts],
                           embeds.device, embeds.dtype)
        return (embeds * (weights / weights.sum())[None, :, None]).sum(dim=1)

    def _full_length(self, shown_frames: int, frame_indices: FrameIndices) -> tuple[int, Optional[tuple[int, ...]]]:
        """(frames of the full video, validated subset indices or None when the input is the full video)."""
        if frame_indices is None:
            return shown_frames, None
        if self.video_frames is None:
            raise ValueError(
                "frame_indices were given but the full video's frame count is unknown: call prepare(num_frames) "
                "with the full video's frame count first (the TITAN-Guide samplers do)."
            )
        indices = subset_frame_indices(frame_indices, shown_frames, self.video_frames)
        return self.video_frames, indices

    def forward(self, video: torch.Tensor, frame_indices: FrameIndices = None) -> torch.Tensor:
        """Per-video loss (B,): weighted ``1 - cos`` to the audio (and text) embeddings.

        ``frame_indices`` (F',): the video holds only these frames of the full video (see the module docstring).
        """
        self.check_video(video)
        batch = video.shape[0]
        num_frames, frame_indices = self._full_length(video.shape[1], frame_indices)
        audio = self.audio_embedding(num_frames)
        if audio.shape[0] not in (1, batch):
            raise ValueError(
                f"the audio batch has {audio.shape[0]} items but the video batch has {batch}; "
                f"give one audio for all videos or one per video."
            )
        compute_dtype = torch.promote_types(video.dtype, torch.float32)
        vision = F.normalize(self.vision_embedding(video, frame_indices).to(compute_dtype), dim=-1)
        loss = self.audio_weight * (1 - (vision * audio.to(compute_dtype)).sum(dim=-1))
        if self.text_weight > 0:
            loss = loss + self.text_weight * (1 - vision @ self.text_embedding.to(compute_dtype))
        return loss
