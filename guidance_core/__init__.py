"""guidance_core: TITAN-Guide's forward-gradient guidance engine in plain PyTorch (never imports ComfyUI)."""
from . import baselines, packed, profiling
from .forward_ad import (GraphedJvp, attention_route, chunked_math_sdpa, forward_ad_scope, forward_ad_sdpa,
                         register_attention_context)
from .forward_ad.attention import forward_ad_attention
from .forward_ad.cuda_graph import requested as cuda_graph_requested
from .decode import DecodedLoss, PixelScore, chunked_decode, plan_chunk_frames
from .inference_tensors import InferenceTensorClones
from .denoiser import (DiscreteSchedule, EpsDenoiser, VDenoiser, sigmas_from_alphas_cumprod, to_d,
                       vp_input_scale)
from .forward_gradient import ForwardGradient, directional_derivative, exact_gradient, forward_gradient
from .guesses import (AntitheticGuess, GuessContext, MixedGuess, MomentumGuess, OrthogonalGuess, RandomGuess,
                      SampledGradientGuess, ScoreGuess, SmoothRandomGuess, make_guess)
from .layout import Layout
from .report import RunRecord, StepReport, attention_routes, format_report, forward_ad_line, plot_losses
from .run_config import GuessSpec, GuidanceSettings, MethodSpec, check_run
from .sampling import SampleResult, SamplingContext, sample
from .titan import LookaheadGuidance, Titan, Traverse, cosine
from .steps import euler_step, heun_step, lookahead_sigmas, noise_like, unroll, with_checkpointing
from .update import strength_schedule

__all__ = [name for name in dir() if not name.startswith("_")]
