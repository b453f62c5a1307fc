"""Training and evaluation of the embedded UNet and classifiers on the procedural world.

Data are rendered on the fly on the training device from fixed world seeds, so every run sees
fresh clips and nothing is stored.  World seeds: UNet 1, guiding classifier 2, judge 3; held-out
evaluation uses seeds >= 1000 (tests use others still).

Step counts are either fixed (``steps``) or planned from a time budget (``seconds``): the first
``PROBE_STEPS`` steps (inside the learning-rate warm-up, whose schedule does not depend on the
total) are timed, and the total is fixed from the measured step time.  The chosen total is
recorded, so a run can be repeated with fixed steps.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .classifier import augment_for_training
from .codec import encode
from .sampling import sample_videos
from .unet import NUM_TRAIN_TIMESTEPS, alphas_cumprod
from .world import ATTRIBUTE_NAMES, ATTRIBUTES, NUM_FRAMES, make_batch

UNET_WORLD_SEED = 1
CLASSIFIER_WORLD_SEED = 2
JUDGE_WORLD_SEED = 3
HELD_OUT_WORLD_SEED = 1000
PROBE_STEPS = 30
SATURATION_THRESHOLD = 0.35  # background saturation stays below 0.08, object colours are above 0.6


@dataclass(frozen=True)
class LoopSettings:
    """How long a training loop runs and how it learns."""

    steps: int | None = None  # fixed number of steps, or None to plan from ``seconds``
    seconds: float = 60.0
    max_steps: int = 1_000_000
    batch_clips: int = 64
    learning_rate: float = 3e-4
    warmup_steps: int = 200
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0


def learning_rate_at(step: int, total: int, settings: LoopSettings) -> float:
    """Linear warm-up then cosine decay to ``final_lr_fraction`` of the peak."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = min(1.0, (step - settings.warmup_steps) / max(1, total - settings.warmup_steps))
    floor = settings.final_lr_fraction
    return settings.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class ExponentialMovingAverage:
    """EMA copy of a model's parameters with the usual (1 + n) / (10 + n) warm-up of the decay."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend the current weights into the average."""
        decay = min(self.decay, (1 + step) / (10 + step))
        averages = list(self.model.parameters())
        currents = [parameter.detach() for parameter in model.parameters()]
        torch._foreach_lerp_(averages, currents, 1.0 - decay)  # one fused update instead of one per tensor


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def run_loop(name: str, model: nn.Module, step_loss: Callable[[int], torch.Tensor], settings: LoopSettings,
             device: torch.device, log: Callable[[str], None], ema: ExponentialMovingAverage | None = None) -> dict:
    """AdamW loop over ``step_loss(step)``; returns a record with steps, timing and a loss-curve summary."""
    if settings.steps is None and settings.warmup_steps < PROBE_STEPS:
        raise ValueError("time-budgeted loops need warmup_steps >= PROBE_STEPS so the probe's schedule is fixed")
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, betas=(0.9, 0.99),
                                  weight_decay=settings.weight_decay, fused=device.type == "cuda")
    total = settings.steps if settings.steps is not None else settings.max_steps
    losses = torch.zeros(settings.max_steps if settings.steps is None else settings.steps, device=device)
    model.train()
    _synchronize(device)
    start = time.perf_counter()
    probe_start = start
    step = 0
    stopped_early = False
    while step < total:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, total, settings)
        loss = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(model, step)
        losses[step] = loss.detach()
        step += 1
        if settings.steps is None and step == 5:
            _synchronize(device)
            probe_start = time.perf_counter()
        if settings.steps is None and step == PROBE_STEPS:
            _synchronize(device)
            step_time = (time.perf_counter() - probe_start) / (PROBE_STEPS - 5)
            remaining = settings.seconds - (time.perf_counter() - start)
            total = int(min(settings.max_steps, max(PROBE_STEPS, PROBE_STEPS + remaining / step_time)))
            log(f"[{name}] {step_time * 1000:.1f} ms/step -> {total} steps for a {settings.seconds:.0f} s budget")
        if step % 250 == 0 or step == total:
            log(f"[{name}] step {step}/{total} loss {losses[max(0, step - 50):step].mean().item():.4f} "
                f"({time.perf_counter() - start:.0f} s)")
        if settings.steps is None and time.perf_counter() - start > 1.2 * settings.seconds + 10:
            stopped_early = True  # safety net if the machine slows down after the probe
            log(f"[{name}] stopped early at step {step}: over the time budget")
            break
    _synchronize(device)
    wall = time.perf_counter() - start
    curve = losses[:step].cpu()
    window = max(1, step // 10)
    model.eval()
    return {
        "steps": step,
        "planned_steps": total,
        "stopped_early": stopped_early,
        "wall_seconds": round(wall, 2),
        "batch_clips": settings.batch_clips,
        "learning_rate": settings.learning_rate,
        "warmup_steps": settings.warmup_steps,
        "weight_decay": settings.weight_decay,
        "loss_first_window": round(curve[:window].mean().item(), 5),
        "loss_last_window": round(curve[-window:].mean().item(), 5),
        "loss_curve_deciles": [round(chunk.mean().item(), 5) for chunk in curve.chunk(10)],
        "window_steps": window,
    }


def diffusion_loss(model: nn.Module, x0: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor,
                   device: torch.device) -> torch.Tensor:
    """eps-prediction MSE at per-clip timesteps (one timestep shared by a clip's frames)."""
    schedule = alphas_cumprod(torch.float32).to(device)
    frame_timesteps = timesteps.repeat_interleave(NUM_FRAMES)
    alpha = schedule[frame_timesteps].view(-1, 1, 1, 1)
    noisy = alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise
    with _autocast(device):
        predicted = model(noisy, frame_timesteps.to(torch.float32))
    return F.mse_loss(predicted.float(), noise)


def train_unet(model: nn.Module, settings: LoopSettings, device: torch.device, seed: int,
               log: Callable[[str], None], ema_decay: float = 0.999) -> tuple[ExponentialMovingAverage, dict]:
    """Train the UNet on fresh clips of world ``UNET_WORLD_SEED``; returns the EMA and a record."""
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    ema = ExponentialMovingAverage(model, ema_decay)
    batch = settings.batch_clips

    def step_loss(step: int) -> torch.Tensor:
        x0 = encode(make_batch(UNET_WORLD_SEED, step * batch, batch, device).video)
        timesteps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=generator, device=device)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        return diffusion_loss(model, x0, timesteps, noise, device)

    record = run_loop("unet", model, step_loss, settings, device, log, ema)
    record.update(ema_decay=ema_decay, world_seed=UNET_WORLD_SEED, seed=seed)
    return ema, record


@torch.no_grad()
def held_out_diffusion_loss(model: nn.Module, device: torch.device, clips: int = 32) -> float:
    """eps-MSE on fixed held-out clips at fixed timesteps spread over 0..999 (fixed noise)."""
    x0 = encode(make_batch(HELD_OUT_WORLD_SEED + 1, 0, clips, device).video)
    generator = torch.Generator(device="cpu").manual_seed(0)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    timesteps = torch.linspace(0, NUM_TRAIN_TIMESTEPS - 1, clips).round().long().to(device)
    return diffusion_loss(model, x0, timesteps, noise, device).item()


def classification_loss(model: nn.Module, video: torch.Tensor, labels: dict[str, torch.Tensor],
                        device: torch.device, label_smoothing: float = 0.0) -> torch.Tensor:
    """Sum over attributes of the cross-entropy of the true labels."""
    with _autocast(device):
        logits = model(video)
    return sum(F.cross_entropy(logits[name].float(), labels[name], label_smoothing=label_smoothing)
               for name in ATTRIBUTE_NAMES)


@dataclass(frozen=True)
class RobustnessSettings:
    """Augmentation and adversarial training of a classifier (all off = plain training)."""

    noise_max: float = 0.08  # pixel noise std drawn uniformly in [0, noise_max] per clip
    label_smoothing: float = 0.0
    adversarial_l2: float = 0.0  # radius of L2 adversarial examples, drawn uniformly in [0, r] per clip


def adversarial_examples(model: nn.Module, video: torch.Tensor, labels: dict[str, torch.Tensor], device: torch.device,
                         radius: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """One normalised-gradient step (fast gradient method, L2) of length ``radius`` (B,) per clip."""
    probe = video.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(classification_loss(model, probe, labels, device, label_smoothing), probe)
    norm = gradient.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1, 1)
    return (video + radius.view(-1, 1, 1, 1, 1) * gradient / norm).detach()


def train_classifier(model: nn.Module, settings: LoopSettings, device: torch.device, seed: int, world_seed: int,
                     name: str, log: Callable[[str], None],
                     robustness: RobustnessSettings = RobustnessSettings()) -> dict:
    """Train an attribute classifier on fresh augmented clips of world ``world_seed``.

    With ``robustness.adversarial_l2 > 0`` the loss is the mean of the loss on the augmented clips
    and on L2 adversarial versions of them, which makes the input gradients perceptually aligned.
    """
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    batch = settings.batch_clips
    smoothing = robustness.label_smoothing

    def step_loss(step: int) -> torch.Tensor:
        clips = make_batch(world_seed, step * batch, batch, device)
        video = augment_for_training(clips.video, generator, robustness.noise_max)
        loss = classification_loss(model, video, clips.labels, device, smoothing)
        if robustness.adversarial_l2 <= 0:
            return loss
        radius = robustness.adversarial_l2 * torch.rand(batch, generator=generator, device=device)
        attacked = adversarial_examples(model, video, clips.labels, device, radius, smoothing)
        return 0.5 * (loss + classification_loss(model, attacked, clips.labels, device, smoothing))

    record = run_loop(name, model, step_loss, settings, device, log)
    record.update(world_seed=world_seed, seed=seed, **asdict(robustness))
    return record


@torch.no_grad()
def predict_attributes(model: nn.Module, video: torch.Tensor, batch: int = 256) -> dict[str, torch.Tensor]:
    """Arg-max class per attribute for videos (B, 16, 3, 32, 32)."""
    predictions: dict[str, list[torch.Tensor]] = {name: [] for name in ATTRIBUTE_NAMES}
    for chunk in video.split(batch):
        logits = model(chunk)
        for name in ATTRIBUTE_NAMES:
            predictions[name].append(logits[name].argmax(dim=1))
    return {name: torch.cat(values) for name, values in predictions.items()}


@torch.no_grad()
def evaluate_classifier(model: nn.Module, world_seed: int, clips: int, device: torch.device) -> dict[str, float]:
    """Accuracy per attribute (and of all four jointly) on ``clips`` fresh clips of ``world_seed``."""
    model.eval()
    correct = {name: 0 for name in ATTRIBUTE_NAMES}
    joint = 0
    for start in range(0, clips, 256):
        batch = make_batch(world_seed, start, min(256, clips - start), device)
        predictions = predict_attributes(model, batch.video)
        all_right = torch.ones_like(batch.labels["colour"], dtype=torch.bool)
        for name in ATTRIBUTE_NAMES:
            right = predictions[name] == batch.labels[name]
            correct[name] += int(right.sum())
            all_right = all_right & right
        joint += int(all_right.sum())
    accuracy = {name: round(count / clips, 4) for name, count in correct.items()}
    accuracy["all_four"] = round(joint / clips, 4)
    return accuracy


def saturated_fraction(video: torch.Tensor) -> float:
    """Fraction of pixels whose saturation (max minus min channel) marks them as object pixels."""
    saturation = video.amax(dim=2) - video.amin(dim=2)
    return (saturation > SATURATION_THRESHOLD).float().mean().item()


@torch.no_grad()
def evaluate_samples(unet: nn.Module, judge: nn.Module, classifier: nn.Module, clips: int, steps: int,
                     device: torch.device, seed: int = 0) -> dict:
    """Unguided DDIM samples: judged attribute histograms, judge/classifier agreement, pixel statistics."""
    videos = sample_videos(unet, clips, steps=steps, seed=seed, device=device)
    real = make_batch(HELD_OUT_WORLD_SEED + 2, 0, clips, device).video
    clamped = videos.clamp(0, 1)
    judged = predict_attributes(judge, clamped)
    guided = predict_attributes(classifier, clamped)
    confidence = []
    for chunk in clamped.split(256):
        logits = judge(chunk)
        confidence.append(torch.stack([logits[name].softmax(1).amax(1) for name in ATTRIBUTE_NAMES], 1))
    confidence = torch.cat(confidence)
    histograms = {name: {value: int((judged[name] == index).sum()) for index, value in enumerate(ATTRIBUTES[name])}
                  for name in ATTRIBUTE_NAMES}
    agreement = {name: round((judged[name] == guided[name]).float().mean().item(), 4) for name in ATTRIBUTE_NAMES}
    return {
        "clips": clips,
        "ddim_steps": steps,
        "judge_histograms": histograms,
        "judge_classifier_agreement": agreement,
        "judge_mean_confidence": round(confidence.mean().item(), 4),
        "judge_fraction_confident_all_four": round((confidence.amin(1) > 0.9).float().mean().item(), 4),
        "sample_pixel_mean": round(videos.mean().item(), 4),
        "sample_pixel_std": round(videos.std().item(), 4),
        "sample_out_of_range_fraction": round(((videos < -0.02) | (videos > 1.02)).float().mean().item(), 5),
        "data_pixel_mean": round(real.mean().item(), 4),
        "data_pixel_std": round(real.std().item(), 4),
        "sample_saturated_fraction": round(saturated_fraction(clamped), 4),
        "data_saturated_fraction": round(saturated_fraction(real), 4),
    }


@torch.no_grad()
def world_device_consistency(device: torch.device, clips: int = 32) -> dict:
    """Compare the same clips rendered on the CPU and on ``device`` (bit-identical expected)."""
    on_cpu = make_batch(HELD_OUT_WORLD_SEED + 3, 0, clips, "cpu")
    on_device = make_batch(HELD_OUT_WORLD_SEED + 3, 0, clips, device)
    labels_equal = all(torch.equal(on_cpu.labels[name], on_device.labels[name].cpu()) for name in ATTRIBUTE_NAMES)
    difference = (on_cpu.video - on_device.video.cpu()).abs().max().item()
    return {"device": str(device), "labels_identical": labels_equal, "video_bit_identical": difference == 0.0,
            "video_max_abs_difference": difference}
