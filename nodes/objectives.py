"""Objective nodes with guidance networks: DOVER, CLIP style, ImageBind audio, and frame interpolation.

Loaders build the networks outside inference mode (backprop-based guesses and baselines differentiate through
them) and hand them to ComfyUI's model management (nodes.guidance_models), which the guided samplers load
together with the diffusion model and the VAE.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import torch

from ..comfy_v3 import io

from ..objectives import dover as dover_objective
from ..objectives import imagebind_audio, style_clip
from ..objectives.checkpoint_layouts import (AUTO_ARCHITECTURE, build_clip, build_dover, build_imagebind,
                                             bundled_open_clip_configs)
from ..objectives.combination import ManagedInterpolationObjective, ManagedObjective, ObjectiveSet, ObjectiveSpec
from ..objectives.frame_interpolation import keyframe_objective
from .guidance_models import (CLIP_FOLDER, DOVER_FOLDER, DTYPES, IMAGEBIND_FOLDER, LoadedGuidanceModel, WeightsFolder,
                              cached_load)
from .sockets import TitanObjective, node_schema

LOG = logging.getLogger("titan_guide")

TitanDoverModel = io.Custom("TITAN_DOVER_MODEL")
TitanImageBindModel = io.Custom("TITAN_IMAGEBIND_MODEL")
TitanClipModel = io.Custom("TITAN_CLIP_MODEL")



def objective_output(module: ManagedObjective, weight: float, name: str, supplied: Sequence[str] = ()) -> io.NodeOutput:
    """TITAN_OBJECTIVE output holding one weighted objective."""
    spec = ObjectiveSpec(module, float(weight), name, supplied=frozenset(supplied))
    return io.NodeOutput(ObjectiveSet((spec,)))


def _dtype_input() -> io.Combo.Input:
    """The loaders' weight dtype choice."""
    return io.Combo.Input("dtype", options=list(DTYPES), default="fp32",
                          tooltip="Weight dtype. fp32 as in the paper (most accurate); bf16 / fp16 halve the weights' "
                                  "memory (fp16 can overflow; on CPU both are slower than fp32).")


class WeightsLoader(io.ComfyNode):
    """A guidance-network loader node: one weights file of `FOLDER` and a dtype -> the network under ComfyUI's
    model management (subclasses set the class attributes)."""

    FOLDER: WeightsFolder
    BUILD: Callable[[str, torch.dtype], tuple[torch.nn.Module, str]]  # build_dover, build_imagebind
    OUTPUT: io.Output

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, f"TITAN Load {cls.FOLDER.weights.what}", cls.FOLDER.tooltip(), inputs=[io.Combo.Input("weights_name", options=cls.FOLDER.files(), tooltip=cls.FOLDER.tooltip()),
                    _dtype_input()],
            outputs=[cls.OUTPUT])

    @classmethod
    def validate_inputs(cls, weights_name) -> bool | str:
        """Before running: the selected file must be listed; otherwise say where to put it and where to get it."""
        return cls.FOLDER.validate(weights_name)

    @classmethod
    def execute(cls, weights_name, dtype) -> io.NodeOutput:
        """Load (or reuse) the selected file."""
        path = cls.FOLDER.path_of(weights_name)
        return io.NodeOutput(cached_load(cls.FOLDER.weights.what, path, dtype, (), cls.BUILD))


class TitanDoverLoader(WeightsLoader):
    """Loads the DOVER video-quality evaluator (Wu et al., ICCV 2023) for the TITAN Aesthetic Objective."""

    FOLDER, BUILD = DOVER_FOLDER, staticmethod(build_dover)
    OUTPUT = TitanDoverModel.Output("dover", tooltip="DOVER network (managed by ComfyUI's model management).")


class TitanImageBindLoader(WeightsLoader):
    """Loads ImageBind (Girdhar et al., CVPR 2023; vision, audio and text towers) for the TITAN Audio Objective."""

    FOLDER, BUILD = IMAGEBIND_FOLDER, staticmethod(build_imagebind)
    OUTPUT = TitanImageBindModel.Output("imagebind", tooltip="ImageBind network (managed by ComfyUI).")


class TitanClipStyleLoader(io.ComfyNode):
    """Loads a CLIP model for the TITAN Style Objective: a Hugging Face-layout clip_vision file (image tower: style
    images) or an open_clip checkpoint (image and text tower: style images and text targets)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "TITAN Load CLIP (style)", CLIP_FOLDER.tooltip(), inputs=[
                io.Combo.Input("clip_name", options=CLIP_FOLDER.files(), tooltip=CLIP_FOLDER.tooltip()),
                io.Combo.Input("architecture", options=[AUTO_ARCHITECTURE, *bundled_open_clip_configs()],
                               default=AUTO_ARCHITECTURE,
                               tooltip=("open_clip architecture of an open_clip checkpoint (not used for Hugging Face "
                                        "clip_vision files, which describe themselves). auto: the open_clip config "
                                        "saved as <file name>.json next to the checkpoint if there is one, else the "
                                        "bundled config whose sizes match the file (GELU variant; QuickGELU when the "
                                        "file name contains 'openai'). Pick it by hand when auto cannot tell.")),
                io.String.Input("pretrained_tag", default="",
                                tooltip=("Optional open_clip pretrained tag of the weights (e.g. laion2b_s32b_b79k, "
                                         "openai): selects open_clip's bundled preprocessing and QuickGELU setting for "
                                         "that release; nothing is downloaded. Empty = the architecture's defaults.")),
                _dtype_input(),
            ],
            outputs=[TitanClipModel.Output("clip", tooltip="CLIP model (managed by ComfyUI's model management).")],
        )

    @classmethod
    def validate_inputs(cls, clip_name) -> bool | str:
        """Before running: the selected file must be listed; otherwise say where to put it and where to get it."""
        return CLIP_FOLDER.validate(clip_name)

    @classmethod
    def execute(cls, clip_name, architecture, pretrained_tag, dtype) -> io.NodeOutput:
        """Load (or reuse) the selected CLIP file."""
        path = CLIP_FOLDER.path_of(clip_name)
        tag = pretrained_tag.strip()

        def build(file_path: str, weight_dtype: torch.dtype):
            return build_clip(file_path, weight_dtype, architecture, tag)

        return io.NodeOutput(cached_load("CLIP", path, dtype, (architecture, tag), build))


def _weight_input() -> io.Float.Input:
    """The objectives' weight input."""
    return io.Float.Input("weight", default=1.0, min=0.0, max=100.0, step=0.01, tooltip="Weight of this objective in "
                          "the guidance loss (a TITAN Combine Objectives node multiplies it).")


def _require(model, socket: str, loader: str) -> LoadedGuidanceModel:
    """The loaded model, or a clear error when the socket carries something else."""
    if not isinstance(model, LoadedGuidanceModel):
        raise ValueError(f"'{socket}' must come from a {loader} node, got {type(model).__name__}")
    return model


class TitanAestheticObjective(io.ComfyNode):
    """Loss = -DOVER score of the decoded video (B, F >= 2 frames of at least 32x32 px). fused: the official fused
    quality in (0, 1); aesthetic / technical: that branch's raw score."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "TITAN Aesthetic Objective (DOVER)", inputs=[
                TitanDoverModel.Input("dover", tooltip="DOVER network from TITAN Load DOVER."),
                io.Combo.Input("mode", options=list(dover_objective.LOSS_MODES), default="fused",
                               tooltip=("fused: official fusion of both branches (paper's aesthetic guidance uses "
                                        "DOVER's score); aesthetic: ConvNeXt branch on resized frames (composition, "
                                        "content); technical: Swin branch on 32x32 fragments (sharpness, noise).")),
                _weight_input(),
                io.Combo.Input("fragment_sampling", options=["random", "center"], default="random",
                               tooltip=("Where the technical branch's 32x32 fragments are cut in each grid cell: "
                                        "random offsets (as upstream, fixed by the seed) or the cell centres.")),
                io.Int.Input("fragment_seed", default=0, min=0, max=2**31 - 1,
                             tooltip=("Seed of the fragment positions; fixed so every evaluation of a step sees the "
                                      "same fragments.")),
                io.Int.Input("technical_samples", default=1, min=1, max=8,
                             tooltip=("Average the technical score over this many fragment samplings (upstream "
                                      "averages 3); each one costs a technical-branch pass.")),
            ],
            outputs=[TitanObjective.Output("objective", tooltip="Connect to a TITAN-Guide sampler.")],
        )

    @classmethod
    def execute(cls, dover, mode, weight, fragment_sampling, fragment_seed, technical_samples) -> io.NodeOutput:
        """Build the DOVER objective."""
        model = _require(dover, "dover", "TITAN Load DOVER")
        with torch.inference_mode(False):
            loss = dover_objective.DoverLoss(model.network, mode=mode, fragment_sampling=fragment_sampling,
                                             fragment_seed=int(fragment_seed), technical_samples=int(technical_samples))
        return objective_output(ManagedObjective(loss, model), weight, f"DOVER {mode}")


class TitanStyleObjective(io.ComfyNode):
    """Per frame: style_weight * style term (cosine: 1 - cos(CLIP(frame), CLIP(style)); gram: Gram matrix distance of
    patch tokens) + text_weight * (1 - cos(CLIP(frame), CLIP(text))) + content_weight * (1 - cos(CLIP(frame),
    CLIP(reference frame))); averaged over frames."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "TITAN Style Objective (CLIP)", inputs=[
                TitanClipModel.Input("clip", tooltip="CLIP model from TITAN Load CLIP (style)."),
                io.Combo.Input("loss_kind", options=list(style_clip.STYLE_MODES), default="cosine",
                               tooltip=("cosine: match the style image's CLIP embedding (paper's Style-CLIP "
                                        "objective); gram: match Gram matrices of the patch tokens at gram_layer "
                                        "(texture; needs a ViT image tower and a style image).")),
                _weight_input(),
                io.Image.Input("style_image", optional=True,
                               tooltip=("Style reference image(s), any size (each is resized and centre-cropped on "
                                        "its own); several images are averaged.")),
                io.String.Input("text", default="", multiline=True,
                                tooltip=("Optional text target (needs an open_clip checkpoint with a text tower). "
                                         "Empty = none.")),
                io.Float.Input("style_weight", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the style-image term (used when a style image is connected)."),
                io.Float.Input("text_weight", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the text term (used when text is given)."),
                io.Float.Input("content_weight", default=0.0, min=0.0, max=100.0, step=0.01,
                               tooltip=("Weight of the content term: keeps each frame's CLIP embedding near the same "
                                        "frame of content_reference. 0 = off.")),
                io.Image.Input("content_reference", optional=True,
                               tooltip=("Reference frames for the content term (e.g. the decoded unguided video), as "
                                        "many frames as each generated video. Needed when content_weight > 0.")),
                io.Int.Input("gram_layer", default=-2, min=-64, max=63,
                             tooltip="Image-tower block whose patch tokens the gram loss compares (-2 = penultimate)."),
                io.Int.Input("frames_per_chunk", default=0, min=0, max=4096,
                             tooltip="Frames sent through CLIP at once (0 = all). Lower values lower peak memory."),
            ],
            outputs=[TitanObjective.Output("objective", tooltip="Connect to a TITAN-Guide sampler.")],
        )

    @classmethod
    def execute(cls, clip, loss_kind, weight, text, style_weight, text_weight, content_weight, gram_layer,
                frames_per_chunk, style_image=None, content_reference=None) -> io.NodeOutput:
        """Build the CLIP style objective (style / text embeddings are computed here, once)."""
        model = _require(clip, "clip", "TITAN Load CLIP (style)")
        prompt = text.strip() or None  # an empty field: no text target
        if style_image is None and prompt is None:
            raise ValueError("the style objective needs a target: connect a style_image, enter a text, or both")
        if prompt is not None and not model.network.has_text:
            raise ValueError(
                f"a text target needs CLIP's text tower, but {os.path.basename(model.path)} is a Hugging Face "
                "clip_vision file (image tower only). Load an open_clip checkpoint (e.g. open_clip_model.safetensors "
                "of ViT-H-14) in TITAN Load CLIP (style), or clear the text.")
        if content_weight > 0 and content_reference is None:
            raise ValueError("content_weight > 0 needs the content_reference frames; connect them or set the "
                             "content weight to 0")
        model.load()
        device = model.device
        with torch.inference_mode(False):
            reference = None if content_reference is None or content_weight <= 0 else content_reference.to(device)
            loss = style_clip.StyleLoss(
                model.network, style_image=style_image, text=prompt, mode=loss_kind, style_weight=style_weight,
                text_weight=text_weight, content_weight=content_weight, content_video=reference,
                gram_layer=int(gram_layer), frames_per_chunk=int(frames_per_chunk) or None)
        parts = (["style image"] if style_image is not None else []) + ([f"text {prompt!r}"] if prompt else [])
        name = f"CLIP style {loss_kind} ({', '.join(parts)}" + (f"; content {content_weight:g}" if reference is not None
                                                                  else "") + ")"
        return objective_output(ManagedObjective(loss, model), weight, name)


class TitanAudioObjective(io.ComfyNode):
    """Loss = audio_weight * (1 - cos(ImageBind(video), ImageBind(audio span))) + text_weight * (1 -
    cos(ImageBind(video), ImageBind(text))). A video of F frames at fps covers F / fps seconds of the audio from
    audio_start; the audio must be that long. Any sample rate (resampled to 16 kHz) and channel count (averaged to
    mono)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "TITAN Audio Objective (ImageBind)", inputs=[
                TitanImageBindModel.Input("imagebind", tooltip="ImageBind network from TITAN Load ImageBind."),
                io.Audio.Input("audio", tooltip="Audio to align the video with (e.g. from Load Audio)."),
                io.Float.Input("fps", default=8.0, min=0.1, max=240.0, step=0.01,
                               tooltip="Frame rate of the generated video: maps frames to audio time."),
                io.Float.Input("audio_start", default=0.0, min=0.0, max=86400.0, step=0.01,
                               tooltip="Second of the audio where the video starts."),
                _weight_input(),
                io.String.Input("text", default="", multiline=True,
                                tooltip=("Optional text the video should also match (ImageBind text tower). "
                                         "Empty = none.")),
                io.Float.Input("audio_weight", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the audio term."),
                io.Float.Input("text_weight", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the text term (used when text is given)."),
                io.Combo.Input("vision_clips", options=["pairs", "official"], default="pairs",
                               tooltip=("Which frames form ImageBind's 2-frame clips. pairs: consecutive pairs "
                                        "covering every frame (every frame gets guidance); official: ImageBind's 5 "
                                        "clips of 2 s (first and last frame of each).")),
                io.Combo.Input("spatial_crops", options=["3", "1"], default="3",
                               tooltip="Square crops per frame (3 = ImageBind's left/centre/right, 1 = centre only)."),
                io.Int.Input("clips_per_chunk", default=0, min=0, max=4096,
                             tooltip="Clips sent through the vision tower at once (0 = all). Lower = less memory."),
            ],
            outputs=[TitanObjective.Output("objective", tooltip="Connect to a TITAN-Guide sampler.")],
        )

    @classmethod
    def execute(cls, imagebind, audio, fps, audio_start, weight, text, audio_weight, text_weight, vision_clips,
                spatial_crops, clips_per_chunk) -> io.NodeOutput:
        """Build the ImageBind audio objective."""
        model = _require(imagebind, "imagebind", "TITAN Load ImageBind")
        prompt = text.strip() or None  # an empty field: no text target
        if prompt is not None:
            model.load()  # the text embedding is computed once, here
        with torch.inference_mode(False):
            loss = imagebind_audio.ImageBindAudioLoss(
                model.network, audio, float(fps), text=prompt, audio_weight=audio_weight, text_weight=text_weight,
                audio_start_s=float(audio_start), vision_clips=vision_clips, spatial_crops=int(spatial_crops),
                clips_per_chunk=int(clips_per_chunk) or None)
        name = f"ImageBind audio ({fps:g} fps from {audio_start:g} s" + (f"; text {prompt!r}" if prompt else "") + ")"
        return objective_output(ManagedObjective(loss, model), weight, name, supplied=("audio", "fps"))


class TitanFrameInterpolationObjective(io.ComfyNode):
    """Loss = mean squared error between the known frames of the video and the keyframes (0 for the other frames),
    averaged over frames. pixels: on the decoded video (keyframes the video's size); latent: on latents against the
    keyframes encoded once with the VAE (no decode)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "TITAN Frame Interpolation Objective", inputs=[
                io.Image.Input("keyframes", tooltip="The known frames, in order, the same size as the video."),
                io.String.Input("frame_indices", default="0, -1",
                                tooltip=("Video frame index of each keyframe, comma separated (negative counts from "
                                         "the end: '0, -1' = first and last; with the sampled_gradient guess on a "
                                         "subset of frames use non-negative indices). Ignored when a mask is "
                                         "connected.")),
                io.Combo.Input("space", options=["pixels", "latent"], default="pixels",
                               tooltip=("pixels: compare decoded frames (accurate, decodes every guided step); latent: "
                                        "compare latents with the encoded keyframes (cheap; needs the vae input; "
                                        "image VAEs only).")),
                _weight_input(),
                io.Mask.Input("mask", optional=True,
                              tooltip=("Alternative to frame_indices: one mask per video frame, all 1 for known frames "
                                       "(in keyframe order) and all 0 for the frames to generate.")),
                io.Vae.Input("vae", optional=True,
                             tooltip="VAE that encodes the keyframes for space 'latent' (the sampler's VAE)."),
            ],
            outputs=[TitanObjective.Output("objective", tooltip="Connect to a TITAN-Guide sampler.")],
        )

    @classmethod
    def execute(cls, keyframes, frame_indices, space, weight, mask=None, vae=None) -> io.NodeOutput:
        """Build the keyframe objective (latent space: encode the keyframes once, with the sampler's VAE)."""
        loss, name = keyframe_objective(keyframes, frame_indices, space, mask, None if vae is None else vae.encode)
        return objective_output(ManagedInterpolationObjective(loss), weight, name)


NODE_CLASSES = [TitanDoverLoader, TitanImageBindLoader, TitanClipStyleLoader, TitanAestheticObjective,
                TitanStyleObjective, TitanAudioObjective, TitanFrameInterpolationObjective]
