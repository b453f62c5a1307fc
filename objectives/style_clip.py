"""CLIP style guidance (paper: Style-CLIP objective) and CLIP model loaders.

Two weight sources:

* ``load_clip_vision``: Hugging Face ``vision_model.*`` + ``visual_projection.weight``
  files as ComfyUI keeps them in ``ComfyUI/models/clip_vision/`` (e.g.
  ``CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors``), image tower only, run with
  transformers' ``CLIPVisionModelWithProjection`` built from a config inferred
  from the tensor shapes (no hub access).
* ``load_open_clip``: full open_clip checkpoints (image + text tower) for a
  bundled open_clip architecture name such as ``ViT-H-14``; built with
  ``pretrained=None`` and loaded from the given file only (no network).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import re
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    FrameIndices,
    VideoObjective,
    check_video,
    forward_ad_safe_attention,
    freeze,
    load_state_dict_checked,
    load_weights_file,
    random_init_skipped,
    subset_frame_indices,
)
from .preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess, image_to_nchw

CLIP_VISION_FOLDER = "ComfyUI/models/clip_vision/"
CLIP_VISION_HINT = (
    f"Put a CLIP vision file (Hugging Face layout, e.g. CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors) into "
    f"{CLIP_VISION_FOLDER}. Source: https://huggingface.co/h94/IP-Adapter (models/image_encoder/model.safetensors, "
    "rename it) or https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K."
)
OPEN_CLIP_HINT = (
    f"Put the full open_clip checkpoint (image and text tower, e.g. open_clip_model.safetensors of ViT-H-14) into "
    f"{CLIP_VISION_FOLDER}. Source: https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K "
    "(open_clip_model.safetensors or open_clip_pytorch_model.bin)."
)
HF_VISION_EXPECTED = (
    "a CLIP ViT vision tower in Hugging Face CLIPVisionModelWithProjection layout "
    "(keys vision_model.embeddings.*, vision_model.encoder.layers.N.*, visual_projection.weight)"
)
# Keys of full HF CLIPModel files that the vision tower does not use.
HF_IGNORABLE_KEY = re.compile(r"^(text_model\.|text_projection\.|logit_scale$|vision_model\.embeddings\.position_ids$)")
# ComfyUI's clip_vision configs: OpenAI ViT-B/ViT-L use quick_gelu, LAION ViT-H/ViT-bigG use gelu.
HF_HIDDEN_ACT_BY_WIDTH = {768: "quick_gelu", 1024: "quick_gelu", 1280: "gelu", 1664: "gelu"}
HF_HEADS_BY_WIDTH = {1280: 16, 1664: 16}  # ViT-H: head width 80, ViT-bigG: 104; ViT-B/L: 64
STYLE_MODES = ("cosine", "gram")


class ClipModel(nn.Module):
    """Frozen CLIP image encoder (optionally with text tower) plus its preprocessing settings."""

    has_text: bool = False

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], crop_rounding: str):
        super().__init__()
        self.image_size = int(image_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.crop_rounding = crop_rounding

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype of the wrapped model."""
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Device of the wrapped model."""
        return next(self.parameters()).device

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks of the image tower."""
        raise NotImplementedError

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable official preprocessing of (N, 3, H, W) images in [0, 1]."""
        return clip_preprocess(images, self.image_size, self.mean, self.std, self.crop_rounding)

    def resolve_layer(self, layer: int) -> int:
        """Non-negative block index for a Python-style (possibly negative) index."""
        index = layer + self.num_layers if layer < 0 else layer
        if not 0 <= index < self.num_layers:
            raise ValueError(f"layer {layer} is out of range for an image tower with {self.num_layers} blocks.")
        return index

    def encode_pixels(self, pixels: torch.Tensor, token_layer: Optional[int] = None):
        """Projected image embeddings (N, D) and, if ``token_layer`` is given, that block's patch tokens (N, L, W)."""
        raise NotImplementedError

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Projected text embeddings (T, D); only for models with a text tower."""
        raise ValueError(
            "this CLIP model has no text tower (a clip_vision file holds the image tower only); "
            "load a full open_clip checkpoint with load_open_clip(path, model_name) for text targets."
        )


class HFClipVision(ClipModel):
    """transformers ``CLIPVisionModelWithProjection`` (image tower only)."""

    def __init__(self, model: nn.Module, crop_rounding: str = "floor"):
        config = model.config
        super().__init__(config.image_size, CLIP_MEAN, CLIP_STD, crop_rounding)
        self.model = freeze(model)

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks of the image tower."""
        return self.model.config.num_hidden_layers

    def encode_pixels(self, pixels: torch.Tensor, token_layer: Optional[int] = None):
        """Projected image embeddings (N, D) and optional patch tokens of block ``token_layer``."""
        with forward_ad_safe_attention():
            output = self.model(pixel_values=pixels, output_hidden_states=token_layer is not None)
        if token_layer is None:
            return output.image_embeds, None
        # hidden_states[0] is the embedding output; block i's output is hidden_states[i + 1].
        tokens = output.hidden_states[self.resolve_layer(token_layer) + 1][:, 1:]
        return output.image_embeds, tokens


class OpenClip(ClipModel):
    """open_clip CLIP model (image and text tower) with its bundled tokenizer."""

    has_text = True

    def __init__(self, model: nn.Module, tokenizer, image_size: int, mean, std, crop_rounding: str = "round"):
        super().__init__(image_size, mean, std, crop_rounding)
        self.model = freeze(model)
        self.tokenizer = tokenizer

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks of the image tower."""
        transformer = getattr(self.model.visual, "transformer", None)
        if transformer is None or not hasattr(transformer, "resblocks"):
            raise ValueError("patch tokens (Gram style loss) need an open_clip ViT image tower.")
        return len(transformer.resblocks)

    def encode_pixels(self, pixels: torch.Tensor, token_layer: Optional[int] = None):
        """Projected image embeddings (N, D) and optional patch tokens of block ``token_layer``."""
        with forward_ad_safe_attention():
            if token_layer is None:
                return self.model.encode_image(pixels), None
            output = self.model.visual.forward_intermediates(
                pixels, indices=[self.resolve_layer(token_layer)], output_fmt="NLC"
            )
        return output["image_features"], output["image_intermediates"][0]

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Projected text embeddings (T, D) of the given prompts."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.no_grad(), forward_ad_safe_attention():
            return self.model.encode_text(tokens)


def clip_vision_config_from_state_dict(
    state_dict: dict, num_attention_heads: Optional[int] = None, hidden_act: Optional[str] = None
):
    """Build a transformers ``CLIPVisionConfig`` from the tensor shapes of a HF CLIP vision state dict.

    Head count and activation are not visible in shapes: defaults follow
    ComfyUI's clip_vision configs (16 heads for ViT-H width 1280 and ViT-bigG
    width 1664, otherwise head width 64; quick_gelu for the OpenAI widths
    768/1024, gelu otherwise); pass them explicitly to override.
    """
    from transformers import CLIPVisionConfig

    patch = state_dict["vision_model.embeddings.patch_embedding.weight"]
    positions = state_dict["vision_model.embeddings.position_embedding.weight"].shape[0]
    hidden_size, num_channels, patch_size = patch.shape[0], patch.shape[1], patch.shape[2]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ValueError(f"position embedding with {positions} rows is not a square patch grid plus a class token.")
    layer_ids = {int(m.group(1)) for k in state_dict if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))}
    if not layer_ids or layer_ids != set(range(len(layer_ids))):
        raise ValueError(f"expected {HF_VISION_EXPECTED}; encoder layer indices are missing or not contiguous.")
    if num_attention_heads is None:
        num_attention_heads = HF_HEADS_BY_WIDTH.get(hidden_size, hidden_size // 64)
    if num_attention_heads < 1 or hidden_size % num_attention_heads:
        raise ValueError(
            f"cannot split width {hidden_size} into {num_attention_heads} attention heads; "
            "pass num_attention_heads explicitly."
        )
    return CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=state_dict["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        projection_dim=state_dict["visual_projection.weight"].shape[0],
        num_hidden_layers=len(layer_ids),
        num_attention_heads=num_attention_heads,
        num_channels=num_channels,
        image_size=grid * patch_size,
        patch_size=patch_size,
        hidden_act=hidden_act or HF_HIDDEN_ACT_BY_WIDTH.get(hidden_size, "gelu"),
        layer_norm_eps=1e-5,
    )


def clip_vision_from_state_dict(
    state_dict: dict,
    num_attention_heads: Optional[int] = None,
    hidden_act: Optional[str] = None,
    source: str = "state dict",
) -> HFClipVision:
    """Build and strictly load a ``HFClipVision`` from a HF-layout CLIP vision state dict."""
    if "vision_model.embeddings.patch_embedding.weight" not in state_dict:
        if any(key.startswith("visual.") for key in state_dict):
            raise ValueError(
                f"{source} is an open_clip checkpoint (keys 'visual.*'), not {HF_VISION_EXPECTED}; "
                "load it with load_open_clip(path, model_name)."
            )
        raise ValueError(f"{source} is not {HF_VISION_EXPECTED}; first keys: {', '.join(list(state_dict)[:5])}.")
    if "visual_projection.weight" not in state_dict:
        raise ValueError(f"{source} lacks 'visual_projection.weight'; expected {HF_VISION_EXPECTED}.")
    from transformers import CLIPVisionModelWithProjection

    config = clip_vision_config_from_state_dict(state_dict, num_attention_heads, hidden_act)
    weights = {key: value for key, value in state_dict.items() if not HF_IGNORABLE_KEY.match(key)}
    with random_init_skipped():  # every weight is loaded strictly next
        model = CLIPVisionModelWithProjection(config)
    load_state_dict_checked(model, weights, source, HF_VISION_EXPECTED)
    return HFClipVision(model)


def load_clip_vision(
    path,
    dtype: torch.dtype = torch.float32,
    device="cpu",
    num_attention_heads: Optional[int] = None,
    hidden_act: Optional[str] = None,
) -> HFClipVision:
    """Load a ComfyUI ``clip_vision`` file (HF ``vision_model.*`` layout) as a frozen image encoder."""
    state_dict = load_weights_file(path, "CLIP vision", CLIP_VISION_HINT)
    clip = clip_vision_from_state_dict(state_dict, num_attention_heads, hidden_act, source=f"'{path}'")
    return clip.to(device=device, dtype=dtype)


def _open_clip_config(model_name: str) -> dict:
    """Bundled open_clip model config for ``model_name``; refuse names that need the network."""
    import open_clip

    if not isinstance(model_name, str) or not model_name:
        raise ValueError("model_name must be an open_clip architecture name such as 'ViT-H-14'.")
    if ":" in model_name:
        raise ValueError(
            f"model_name {model_name!r} uses a schema (hf-hub:/local-dir:); give a bundled open_clip architecture "
            "name such as 'ViT-H-14' and the checkpoint path separately."
        )
    config = open_clip.get_model_config(model_name)
    if config is None:
        close = difflib.get_close_matches(model_name, open_clip.list_models(), n=5)
        raise ValueError(
            f"unknown open_clip architecture {model_name!r}"
            + (f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models().")
        )
    text_cfg = config.get("text_cfg", {})
    if "hf_model_name" in text_cfg or "hf_tokenizer_name" in text_cfg or "siglip" in model_name.lower():
        raise ValueError(
            f"open_clip architecture {model_name!r} builds its text tower or tokenizer from the Hugging Face hub, "
            "which is not available offline; use a CLIP ViT architecture such as 'ViT-H-14' or 'ViT-L-14'."
        )
    return config


class _DropLogMessage(logging.Filter):
    """Logging filter that drops records containing a given text."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep records that do not contain the text."""
        return self.text not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_warning():
    """Hide open_clip's 'initialized randomly' warning: the weights are loaded right after creation."""
    log_filter = _DropLogMessage("No pretrained weights loaded")
    logging.getLogger().addFilter(log_filter)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(log_filter)


def open_clip_from_state_dict(
    state_dict: dict, model_name: str, pretrained_tag: Optional[str] = None, source: str = "state dict"
) -> OpenClip:
    """Build open_clip ``model_name`` offline and strictly load ``state_dict`` into it."""
    import open_clip
    from open_clip.model import convert_to_custom_text_state_dict

    _open_clip_config(model_name)
    tag_cfg = {}
    if pretrained_tag is not None:
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained_tag)
        if not tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise ValueError(f"unknown pretrained tag {pretrained_tag!r} for {model_name}; known tags: {tags}.")
    if any(key.startswith("vision_model.") for key in state_dict):
        raise ValueError(
            f"{source} is a Hugging Face vision-only CLIP file (keys 'vision_model.*'), not an open_clip "
            f"checkpoint of {model_name}; load it with load_clip_vision(path) (no text tower)."
        )
    with _quiet_random_init_warning(), random_init_skipped():  # every weight is loaded strictly next
        model = open_clip.create_model(
            model_name,
            pretrained=None,
            load_weights=False,
            pretrained_image=False,
            pretrained_text=False,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            device="cpu",
        )
    weights = dict(state_dict)
    if "positional_embedding" in weights and not hasattr(model, "positional_embedding"):
        weights = convert_to_custom_text_state_dict(weights)
    if "logit_scale" in weights and weights["logit_scale"].ndim != model.logit_scale.ndim:
        weights["logit_scale"] = weights["logit_scale"].reshape(model.logit_scale.shape)
    if getattr(model, "logit_bias", None) is not None and "logit_bias" not in weights:
        weights["logit_bias"] = torch.zeros_like(model.logit_bias)  # non-SigLIP checkpoint, as open_clip does
    weights.pop("text.transformer.embeddings.position_ids", None)
    load_state_dict_checked(model, weights, source, f"the open_clip architecture {model_name!r}")

    preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
    for key in ("mean", "std", "interpolation", "resize_mode"):
        if key in tag_cfg:
            preprocess_cfg[key] = tag_cfg[key]
    size = preprocess_cfg.get("size", 224)
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ValueError(f"non-square open_clip input size {size} is not supported.")
        size = size[0]
    if preprocess_cfg.get("resize_mode", "shortest") != "shortest" or preprocess_cfg.get(
        "interpolation", "bicubic"
    ) not in ("bicubic", "random"):
        raise ValueError(
            f"{model_name} uses resize_mode={preprocess_cfg.get('resize_mode')!r}, "
            f"interpolation={preprocess_cfg.get('interpolation')!r}; only shortest-side bicubic is implemented."
        )
    mean = preprocess_cfg.get("mean", CLIP_MEAN)
    std = preprocess_cfg.get("std", CLIP_STD)
    mean = (mean,) * 3 if isinstance(mean, (int, float)) else mean
    std = (std,) * 3 if isinstance(std, (int, float)) else std
    tokenizer = open_clip.get_tokenizer(model_name)
    return OpenClip(model, tokenizer, size, mean, std, crop_rounding="round")


def load_open_clip(
    path,
    model_name: str,
    pretrained_tag: Optional[str] = None,
    dtype: torch.dtype = torch.float32,
    device="cpu",
) -> OpenClip:
    """Load an open_clip checkpoint file for architecture ``model_name`` (e.g. 'ViT-H-14') without network access.

    ``pretrained_tag`` (e.g. 'laion2b_s32b_b79k') only selects open_clip's
    bundled preprocessing/QuickGELU metadata for that weight release; nothing
    is downloaded.
    """
    _open_clip_config(model_name)  # reject bad names before reading a multi-GB file
    state_dict = load_weights_file(path, f"open_clip {model_name}", OPEN_CLIP_HINT)
    clip = open_clip_from_state_dict(state_dict, model_name, pretrained_tag, source=f"'{path}'")
    return clip.to(device=device, dtype=dtype)


def gram_matrices(tokens: torch.Tensor) -> torch.Tensor:
    """Gram matrices (N, W, W) of token sets (N, L, W), tokens standardised per token first.

    Standardising (layer norm without affine) makes the loss scale independent
    of the residual-stream magnitude of the chosen block.
    """
    standardised = F.layer_norm(tokens, tokens.shape[-1:])
    return standardised.transpose(1, 2) @ standardised / tokens.shape[1]


def _as_video(video: torch.Tensor, name: str) -> torch.Tensor:
    """Accept a video (B, F, 3, H, W) or a ComfyUI IMAGE batch (F, H, W, 3) as one video; return 5-D."""
    if isinstance(video, torch.Tensor) and video.ndim == 4:
        video = image_to_nchw(video, name=name).unsqueeze(0)
    check_video(video, name=name)
    return video


def _prompts(text) -> list[str]:
    """Normalise a prompt or list of prompts; refuse empty input."""
    prompts = [text] if isinstance(text, str) else list(text)
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ValueError("text target must be a non-empty string or a list of non-empty strings.")
    return prompts


class StyleLoss(VideoObjective):
    """CLIP style loss on every frame (Style-CLIP guidance), with optional text and content terms.

    Per frame f of video b (all embeddings L2-normalised):

    * style, ``mode="cosine"``: ``1 - cos(e(frame), s)`` with ``s`` the normalised
      mean embedding of the style image(s);
    * style, ``mode="gram"``: mean squared difference between the Gram matrix of
      the frame's patch tokens at block ``gram_layer`` (default: penultimate) and
      the mean Gram matrix of the style image(s) (see ``gram_matrices``);
    * text (needs a text tower, i.e. ``load_open_clip``): ``1 - cos(e(frame), t)``
      with ``t`` the normalised mean embedding of the prompt(s);
    * content: ``1 - cos(e(frame), e(reference frame f))`` against a reference
      video (e.g. the unguided first-pass frames), to keep the content while the
      style changes; reference batch 1 applies to every video.

    ``frame_losses`` = weighted sum of the terms, (B, F); ``forward`` = its mean
    over frames. Style images may have any size: each is preprocessed on its own.
    ``frames_per_chunk`` bounds how many frames go through CLIP at once.

    The style, text and content-reference embeddings are constant targets,
    computed once at construction (or in ``set_content_reference``), without
    gradient; each evaluation runs CLIP on the video's frames only.
    ``frame_indices`` (the sampled-gradient guess's frame subset) says which
    frames of the full video the input holds: the content term compares each
    with the reference frame of the same index (the other terms are per frame
    and need no index).
    """

    has_frame_losses = True
    accepts_frame_subsets = True

    def __init__(
        self,
        clip: ClipModel,
        style_image: Optional[torch.Tensor] = None,
        text=None,
        mode: str = "cosine",
        style_weight: float = 1.0,
        text_weight: float = 1.0,
        content_weight: float = 0.0,
        content_video: Optional[torch.Tensor] = None,
        gram_layer: int = -2,
        frames_per_chunk: Optional[int] = None,
    ):
        super().__init__()
        if not isinstance(clip, ClipModel):
            raise ValueError("clip must be a ClipModel from load_clip_vision or load_open_clip.")
        if mode not in STYLE_MODES:
            raise ValueError(f"mode must be one of {STYLE_MODES}, got {mode!r}.")
        for label, weight in (("style_weight", style_weight), ("text_weight", text_weight),
                              ("content_weight", content_weight)):
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
                raise ValueError(f"{label} must be a finite number >= 0, got {weight!r}.")
        if style_image is None and text is None:
            raise ValueError("give a style image, a text target, or both.")
        if frames_per_chunk is not None and frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be >= 1 or None, got {frames_per_chunk}.")
        self.clip = clip
        self.mode = mode
        self.style_weight = float(style_weight) if style_image is not None else 0.0
        self.text_weight = float(text_weight) if text is not None else 0.0
        self.content_weight = float(content_weight)
        self.gram_layer = gram_layer if mode == "gram" else None
        self.frames_per_chunk = frames_per_chunk
        if mode == "gram":
            if style_image is None:
                raise ValueError("mode='gram' needs a style image.")
            clip.resolve_layer(gram_layer)
        self.register_buffer("style_embedding", None)
        self.register_buffer("style_gram", None)
        self.register_buffer("text_embedding", None)
        self.register_buffer("content_embeddings", None)
        with torch.no_grad():
            if style_image is not None:
                styles = image_to_nchw(style_image, name="style image")
                styles = styles.to(device=clip.device, dtype=clip.dtype)
                # each style image keeps its own size until preprocessing, so sizes may differ between calls
                pixels = torch.cat([clip.preprocess(styles[i : i + 1]) for i in range(len(styles))])
                embeds, tokens = clip.encode_pixels(pixels, self.gram_layer)
                self.style_embedding = F.normalize(F.normalize(embeds, dim=-1).mean(0), dim=0)
                if mode == "gram":
                    self.style_gram = gram_matrices(tokens).mean(0)
            if text is not None:
                text_embeds = clip.encode_text(_prompts(text))
                self.text_embedding = F.normalize(F.normalize(text_embeds, dim=-1).mean(0), dim=0)
        if content_video is not None:
            self.set_content_reference(content_video)

    def set_content_reference(self, video: torch.Tensor) -> None:
        """Store per-frame CLIP embeddings of a reference video (B|1, F, 3, H, W) or ComfyUI IMAGE (F, H, W, 3)."""
        video = _as_video(video, "content reference video")
        with torch.no_grad():
            embeds, _ = self._encode_frames(video, None)
        self.content_embeddings = F.normalize(embeds, dim=-1)

    def _encode_frames(self, video: torch.Tensor, token_layer: Optional[int]):
        """CLIP embeddings (B, F, D) and optional patch tokens (B*F, L, W) of every frame."""
        batch, frames = video.shape[:2]
        flat = video.reshape(batch * frames, *video.shape[2:])
        chunk = self.frames_per_chunk or flat.shape[0]
        embeds, tokens = [], []
        for start in range(0, flat.shape[0], chunk):
            pixels = self.clip.preprocess(flat[start : start + chunk]).to(self.clip.dtype)
            chunk_embeds, chunk_tokens = self.clip.encode_pixels(pixels, token_layer)
            embeds.append(chunk_embeds)
            tokens.append(chunk_tokens)
        embeds = torch.cat(embeds).reshape(batch, frames, -1)
        return embeds, (torch.cat(tokens) if token_layer is not None else None)

    def frame_losses(self, video: torch.Tensor, frame_indices: FrameIndices = None) -> torch.Tensor:
        """Weighted per-frame style/text/content terms (B, F); ``frame_indices``: the frames of the full video held."""
        self.check_video(video)
        batch, frames = video.shape[:2]
        compute_dtype = torch.promote_types(video.dtype, torch.float32)
        use_content = self.content_weight > 0
        reference = None
        if use_content:
            if self.content_embeddings is None:
                raise ValueError(
                    "content_weight > 0 needs a reference: pass content_video or call set_content_reference."
                )
            reference = self.content_embeddings
            ref_batch, ref_frames = reference.shape[:2]
            indices = subset_frame_indices(frame_indices, frames, ref_frames)
            if indices is not None:  # the reference frames the subset shows; a full subset skips the gather
                reference = reference[:, list(indices)]
                ref_frames = frames
            if ref_frames != frames or ref_batch not in (1, batch):
                raise ValueError(
                    f"content reference has shape (batch {ref_batch}, {ref_frames} frames) but the video has "
                    f"batch {batch} and {frames} frames; the reference must have the same frame count and "
                    f"batch 1 or {batch}."
                )
        else:
            subset_frame_indices(frame_indices, frames)  # validated only: the other terms are per frame
        embeds, tokens = self._encode_frames(video, self.gram_layer)
        unit = F.normalize(embeds.to(compute_dtype), dim=-1)
        total = torch.zeros(batch, frames, dtype=compute_dtype, device=video.device)
        if self.style_weight > 0:
            if self.mode == "cosine":
                style_term = 1 - unit @ self.style_embedding.to(compute_dtype)
            else:
                difference = gram_matrices(tokens.to(compute_dtype)) - self.style_gram.to(compute_dtype)
                style_term = difference.square().mean(dim=(-2, -1)).reshape(batch, frames)
            total = total + self.style_weight * style_term
        if self.text_weight > 0:
            total = total + self.text_weight * (1 - unit @ self.text_embedding.to(compute_dtype))
        if use_content:
            total = total + self.content_weight * (1 - (unit * reference.to(compute_dtype)).sum(dim=-1))
        return total

    def forward(self, video: torch.Tensor, frame_indices: FrameIndices = None) -> torch.Tensor:
        """Per-video loss (B,): the mean of ``frame_losses`` over the frames."""
        return self.frame_losses(video, frame_indices).mean(dim=1)
