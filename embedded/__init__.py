"""Self-trained tiny video diffusion model and attribute classifiers on a procedural world.

Lets guidance be seen working on any CPU: an unconditional 16-frame 32x32 video UNet
(``unet.load_embedded_unet``), an exact pixel-unshuffle codec instead of a VAE (``codec``), a
guiding attribute classifier and an independent judge (``classifier``), all trained by
``scripts/train_embedded.py`` on clips rendered on the fly (``world``).  Committed weights live in
``models/titan_guide/``.  Plain PyTorch; never imports comfy.
"""

from .codec import LATENT_CHANNELS, LATENT_SHAPE, LATENT_SIZE, LATENT_STD, decode, encode
from .classifier import VideoAttributeClassifier, VideoJudgeClassifier, load_classifier
from .sampling import ddim_sample_latents, sample_videos
from .unet import (BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, PREDICTION_TYPE, EmbeddedUNetConfig,
                   EmbeddedVideoUNet, alphas_cumprod, load_embedded_unet)
from .world import ATTRIBUTES, NUM_FRAMES, IMAGE_SIZE, make_batch, make_clips

UNET_FILENAME = "embedded_unet.safetensors"
CLASSIFIER_FILENAME = "embedded_classifier.safetensors"
JUDGE_FILENAME = "embedded_judge.safetensors"

__all__ = [
    "ATTRIBUTES", "BETA_END", "BETA_START", "CLASSIFIER_FILENAME", "EmbeddedUNetConfig", "EmbeddedVideoUNet",
    "IMAGE_SIZE", "JUDGE_FILENAME", "LATENT_CHANNELS", "LATENT_SHAPE", "LATENT_SIZE", "LATENT_STD", "NUM_FRAMES",
    "NUM_TRAIN_TIMESTEPS", "PREDICTION_TYPE", "UNET_FILENAME", "VideoAttributeClassifier", "VideoJudgeClassifier",
    "alphas_cumprod", "ddim_sample_latents", "decode", "encode", "load_classifier", "load_embedded_unet",
    "make_batch", "make_clips", "sample_videos",
]
