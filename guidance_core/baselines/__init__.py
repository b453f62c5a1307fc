"""Baseline guidance methods behind the same interface as TITAN (see guidance_core.sampling)."""
from .common import BASELINE_UPDATES
from .doodl import DOODL
from .exact import ExactGradient
from .freedom import FreeDoM
from .mpgd import MPGD
from .tfg import TFG

__all__ = ["BASELINE_UPDATES", "DOODL", "ExactGradient", "FreeDoM", "MPGD", "TFG"]
