"""Nodes for the embedded tiny video model: a real ComfyUI MODEL (BaseModel, EPS on SD1.5's schedule), VAE (the
exact codec inside a `comfy.sd.VAE`, so VAEDecode / VAEEncode and the guidance decode use it unchanged) and
CONDITIONING, its empty latent, and the attribute-classifier objective.
"""

from __future__ import annotations

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models_base
import folder_paths
from ..comfy_v3 import io

from ..objectives.combination import ObjectiveSet, ObjectiveSpec
from .sockets import TitanObjective, node_schema
from ..embedded import codec as embedded_codec
from ..embedded import unet as embedded_unet
from ..embedded.world import ATTRIBUTES, NUM_FRAMES
from ..embedded import CLASSIFIER_FILENAME, UNET_FILENAME
from ..objectives.attribute_classifier import AttributeClassifierLoss, load_attribute_classifier

MODEL_FOLDER = "titan_guide"
ANY = "any"
# Width of the dummy conditioning tensor; the unconditional UNet never reads it.
CONDITIONING_WIDTH = 8


class EmbeddedLatentFormat(comfy.latent_formats.LatentFormat):
    """12-channel latents of the codec; scale 1 because the codec already standardises (std ~0.25)."""

    scale_factor = 1.0
    latent_channels = embedded_codec.LATENT_CHANNELS
    latent_dimensions = 2

    def __init__(self):
        self.latent_rgb_factors, self.latent_rgb_factors_bias = embedded_codec.preview_rgb_factors()


class EmbeddedModelConfig(comfy.supported_models_base.BASE):
    """Model config: eps prediction on ModelSamplingDiscrete with the SD1.5 scaled-linear schedule."""

    unet_config = {"disable_unet_model_creation": True}  # the UNet is built from its safetensors file
    unet_extra_config = {}
    sampling_settings = {"beta_schedule": "linear",  # ComfyUI's "linear" is sqrt-spaced = diffusers scaled_linear
                         "linear_start": embedded_unet.BETA_START, "linear_end": embedded_unet.BETA_END,
                         "timesteps": embedded_unet.NUM_TRAIN_TIMESTEPS}
    latent_format = EmbeddedLatentFormat
    supported_inference_dtypes = [torch.float32]
    memory_usage_factor = 1.0


class EmbeddedBaseModel(comfy.model_base.BaseModel):
    """BaseModel around the embedded UNet (unconditional, so no cross-attention cond is required)."""

    def __init__(self, unet: embedded_unet.EmbeddedVideoUNet, device=None):
        super().__init__(EmbeddedModelConfig(dict(EmbeddedModelConfig.unet_config)), model_type=comfy.model_base.ModelType.EPS, device=device)
        self.diffusion_model = embedded_unet.EmbeddedDiffusionModel(unet)


def weights_path(filename: str, what: str) -> str:
    """Full path of `filename` in the titan_guide model folder; FileNotFoundError naming file and folders."""
    path = folder_paths.get_full_path(MODEL_FOLDER, filename)
    if path is None:
        folders = ", ".join(folder_paths.get_folder_paths(MODEL_FOLDER)) or "(none registered)"
        raise FileNotFoundError(
            f"{what} weights '{filename}' not found in the '{MODEL_FOLDER}' model folder ({folders}). The file ships "
            f"with the titan-guide pack in models/{MODEL_FOLDER}/; restore it from the repository, copy it into "
            f"ComfyUI's models/{MODEL_FOLDER}/ folder, or re-create it with scripts/train_embedded.py.")
    return path


def load_embedded_model(path: str) -> comfy.model_patcher.ModelPatcher:
    """A ComfyUI MODEL (ModelPatcher around EmbeddedBaseModel) from the embedded UNet safetensors file."""
    unet = embedded_unet.load_embedded_unet(path).to(torch.float32)
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    base = EmbeddedBaseModel(unet, device=offload_device).eval()
    return comfy.model_patcher.ModelPatcher(base, load_device=load_device, offload_device=offload_device)


class EmbeddedCodecVAE(comfy.sd.VAE):
    """comfy.sd.VAE whose model is the exact codec (downscale 2, 12 latent channels, pixels in [0, 1]): the guidance
    decode sees its exact, unclamped output; `decode` (VAEDecode) clamps the IMAGE to [0, 1] as every IMAGE is."""

    def __init__(self):
        # ComfyUI's own pixel-space VAE branch sets up device, dtype, output device and patcher fields ...
        super().__init__(sd={"pixel_space_vae": torch.tensor(1.0)}, dtype=torch.float32)
        # ... then the codec replaces its identity model.
        self.first_stage_model = embedded_codec.CodecAutoencoder().eval()
        self.patcher = comfy.model_patcher.ModelPatcher(self.first_stage_model, load_device=self.device,
                                                        offload_device=comfy.model_management.vae_offload_device())
        self.latent_channels = embedded_codec.LATENT_CHANNELS
        self.downscale_ratio = embedded_codec.DOWNSCALE
        self.upscale_ratio = embedded_codec.DOWNSCALE
        self.latent_dim = 2
        self.output_channels = 3
        self.process_input = self.process_output = torch.nn.Identity()  # exact, unclamped codec pixels
        self.working_dtypes = [torch.float32]
        self.vae_dtype = torch.float32
        # one float per pixel in and out, with a generous margin
        self.memory_used_decode = lambda shape, dtype: 64 * shape[0] * shape[2] * shape[3] * 4 * 4
        self.memory_used_encode = lambda shape, dtype: 64 * shape[0] * shape[2] * shape[3] * 4

    def decode(self, samples_in, vae_options={}):
        """IMAGE (N, 32, 32, 3) in [0, 1] from latents (N, 12, 16, 16)."""
        return super().decode(samples_in, vae_options).clamp(0.0, 1.0)


def _weight_files(default: str) -> list:
    """Weight files of the titan_guide folder, with `default` first (listed even when missing, so graphs
    validate and the loader can say where the file belongs)."""
    files = [name for name in folder_paths.get_filename_list(MODEL_FOLDER) if name != default]
    return [default] + files


class TitanEmbeddedModelLoader(io.ComfyNode):
    """The pack's self-trained tiny unconditional video model (16 frames, 32x32 RGB, ships in models/titan_guide/). Runs
    on any CPU; sample it with KSampler or TITAN-Guide Sampler on a TITAN Embedded Empty Latent, decode with
    VAEDecode."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "TITAN Embedded Video Model Loader", inputs=[io.Combo.Input("unet_name", options=_weight_files(UNET_FILENAME), default=UNET_FILENAME,
                                   tooltip=f"UNet weights in the {MODEL_FOLDER} model folder.")],
            outputs=[
                io.Model.Output("model", tooltip="Unconditional eps-prediction video UNet (SD1.5 schedule)."),
                io.Vae.Output("vae", tooltip="Exact pixel-unshuffle codec (12 x 16 x 16 latents per 32x32 frame)."),
                io.Conditioning.Output("positive", tooltip="Empty conditioning (the model is unconditional)."),
                io.Conditioning.Output("negative", tooltip="Empty conditioning (the model is unconditional)."),
            ],
        )

    @classmethod
    def execute(cls, unet_name) -> io.NodeOutput:
        model = load_embedded_model(weights_path(unet_name, "embedded UNet"))
        # one zero token each: valid for every sampler, ignored by the unconditional UNet
        conditioning = [[[torch.zeros(1, 1, CONDITIONING_WIDTH), {}]] for _ in ("positive", "negative")]
        return io.NodeOutput(model, EmbeddedCodecVAE(), *conditioning)


class TitanEmbeddedEmptyLatent(io.ComfyNode):
    """Empty latent for the embedded model: 16 frames per video stacked in the batch (set frames_per_video = 16 on
    the TITAN-Guide sampler when videos > 1)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "TITAN Embedded Empty Latent", inputs=[io.Int.Input("videos", default=1, min=1, max=256, tooltip="Number of videos (16 frames each).")],
            outputs=[io.Latent.Output("latent")],
        )

    @classmethod
    def execute(cls, videos) -> io.NodeOutput:
        samples = torch.zeros((videos * NUM_FRAMES,) + embedded_codec.LATENT_SHAPE,
                              device=comfy.model_management.intermediate_device())
        return io.NodeOutput({"samples": samples})


class TitanAttributeObjective(io.ComfyNode):
    """Loss = weight * sum over the chosen attributes of -log p(value | video) under the embedded guiding classifier;
    for the embedded video model (16 x 32 x 32 videos)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        def attribute(name: str, default: str):
            return io.Combo.Input(name, options=[ANY, *ATTRIBUTES[name]], default=default,
                                  tooltip=f"Target {name} ('{ANY}' = not guided).")
        return node_schema(cls, "TITAN Attribute Objective (embedded)", inputs=[
                attribute("colour", "red"), attribute("shape", ANY), attribute("direction", ANY),
                attribute("speed", ANY),
                io.Float.Input("weight", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="Weight of the loss (negative pushes away from the targets)."),
                io.Combo.Input("classifier_name", options=_weight_files(CLASSIFIER_FILENAME),
                               default=CLASSIFIER_FILENAME,
                               tooltip=f"Guiding classifier weights in the {MODEL_FOLDER} model folder (the judge "
                                       "file is for evaluation; guiding with it defeats the independent check)."),
            ],
            outputs=[TitanObjective.Output("objective", tooltip="Connect to a TITAN-Guide sampler.")],
        )

    @classmethod
    def execute(cls, colour, shape, direction, speed, weight, classifier_name) -> io.NodeOutput:
        chosen = {"colour": colour, "shape": shape, "direction": direction, "speed": speed}
        targets = {name: value for name, value in chosen.items() if value != ANY}
        if not targets:
            raise ValueError("every attribute is 'any': choose at least one target (e.g. colour = red)")
        classifier = load_attribute_classifier(weights_path(classifier_name, "attribute classifier"))
        module = AttributeClassifierLoss(classifier, targets)
        name = "attribute(" + ", ".join(f"{k}={v}" for k, v in targets.items()) + ")"
        return io.NodeOutput(ObjectiveSet((ObjectiveSpec(module, float(weight), name),)))


NODE_CLASSES = [TitanEmbeddedModelLoader, TitanEmbeddedEmptyLatent, TitanAttributeObjective]
