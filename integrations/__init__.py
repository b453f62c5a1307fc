"""Adapters that present third-party video models to guidance_core (plain PyTorch; never imports comfy).

Each module turns one model family (its network, noise schedule and decoder) into the pieces guidance_core
consumes: a prediction callable for its denoiser classes, a noise-level schedule and a differentiable decode.
The ComfyUI nodes in ``nodes/`` compose them with guidance_core; tests use them without a host.
"""
