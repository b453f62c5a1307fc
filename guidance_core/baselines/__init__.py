"""Baseline guidance methods behind the same interface as TITAN (see guidance_core.sampling)."""
from .exact import ExactGradient

__all__ = ["ExactGradient"]
