"""guidance_core: TITAN-Guide's forward-gradient guidance engine in plain PyTorch (never imports ComfyUI)."""
from . import baselines
from .attention import (attention_route, chunked_math_sdpa, forward_ad_attention, forward_ad_sdpa,
                        register_attention_context)
from .cuda_graph import GraphedJvp
from .decode import DecodedLoss, chunked_decode, plan_chunk_frames
from .denoiser import (DiscreteSchedule, EpsDenoiser, VDenoiser, eps_from, sigmas_from_alphas_cumprod,
                       vp_input_scale)
from .forward_gradient import ForwardGradient, directional_derivative, exact_gradient, forward_gradient
from .guesses import (AntitheticGuess, GuessContext, MixedGuess, MomentumGuess, OrthogonalGuess, RandomGuess,
                      SampledGradientGuess, ScoreGuess, SmoothRandomGuess, make_guess)
from .layout import Layout
from .sampling import SampleResult, SamplingContext, sample
from .titan import LookaheadGuidance, Titan, Traverse, cosine
from .unroll import euler_step, heun_step, lookahead_sigmas, unroll
from .update import strength_schedule

__all__ = [name for name in dir() if not name.startswith("_")]
