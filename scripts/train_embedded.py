"""Train the embedded video UNet, the guiding classifier and the judge; write weights + a JSON record.

From scratch, everything in one run (about 9 minutes on one H100; not run in this form):
    PYTHONUNBUFFERED=1 python3 scripts/train_embedded.py --device cuda --out OUT_DIR --unet-seconds 400
CPU smoke test of the whole pipeline (a few steps, well under a minute):
    OMP_NUM_THREADS=1 python scripts/train_embedded.py --quick --device cpu --out /tmp/embedded_quick
Retrain only some parts, reusing the others from an earlier output folder:
    ... --train classifier --reuse models/titan_guide --out OUT_DIR
Then copy OUT_DIR/embedded_*.safetensors and embedded_training.json into models/titan_guide/.

How the committed weights were made (embedded_training.json keeps all three records, each earlier
one under "earlier_run"):
  1. H100: ``--device cuda --out OUT1`` (then: classifier 60 s, judge 45 s, UNet 285 s) with
     ``LATENT_STD = 1.0`` in embedded/codec.py and a plainly trained (larger) guiding classifier.
     Judge and classifier reached 100 % held-out accuracy, but the UNet's samples were flat grey
     (see embedded/codec.py for why), so LATENT_STD became 0.25.
  2. H100: ``--device cuda --out OUT2 --reuse-classifiers OUT1 --init-unet OUT1/embedded_unet.safetensors
     --unet-seconds 420`` (``--reuse-classifiers DIR`` was the earlier name of ``--train unet --reuse DIR``):
     the UNet fine-tuned at LATENT_STD = 0.25.  This is the committed UNet; the judge is step 1's.
  3. CPU: ``--device cpu --out OUT3 --train classifier --reuse OUT2 --classifier-steps 3000
     --classifier-batch-clips 32 --sample-clips 32`` with OMP_NUM_THREADS=1: the committed guiding
     classifier, now small and adversarially trained, because step 1's had adversarial gradients
     (pixel-space descent on its loss changed nothing the judge could see).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedded.classifier import (  # noqa: E402
    VideoAttributeClassifier, VideoJudgeClassifier, load_classifier, save_classifier)
from embedded.codec import LATENT_STD, PIXEL_MEAN, PIXEL_STD  # noqa: E402
from embedded.training import (  # noqa: E402
    CLASSIFIER_WORLD_SEED, HELD_OUT_WORLD_SEED, JUDGE_WORLD_SEED, LoopSettings, RobustnessSettings,
    evaluate_classifier, evaluate_samples, held_out_diffusion_loss, train_classifier, train_unet,
    world_device_consistency)
from embedded.unet import (  # noqa: E402
    BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, EmbeddedUNetConfig, EmbeddedVideoUNet, count_parameters,
    load_embedded_unet, save_embedded_unet)


COMPONENTS = ("classifier", "judge", "unet")
FILENAMES = {"classifier": "embedded_classifier.safetensors", "judge": "embedded_judge.safetensors",
             "unet": "embedded_unet.safetensors"}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True, help="folder for the .safetensors files and embedded_training.json")
    parser.add_argument("--seed", type=int, default=0, help="base seed (UNet seed; classifier +1, judge +2)")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything: a smoke test")
    parser.add_argument("--train", default=",".join(COMPONENTS),
                        help="comma-separated components to train (classifier, judge, unet); the others are "
                             "taken from --reuse")
    parser.add_argument("--reuse", default=None, metavar="DIR",
                        help="folder with the .safetensors files and embedded_training.json of an earlier run, "
                             "for the components not trained now (their records are kept)")
    parser.add_argument("--init-unet", default=None, metavar="FILE",
                        help="start the UNet from these weights (fine-tuning) instead of a fresh initialisation")
    parser.add_argument("--unet-seconds", type=float, default=400.0)
    parser.add_argument("--unet-steps", type=int, default=None, help="fixed step count instead of a time budget")
    parser.add_argument("--unet-batch-clips", type=int, default=64)
    parser.add_argument("--classifier-seconds", type=float, default=60.0)
    parser.add_argument("--classifier-steps", type=int, default=None)
    parser.add_argument("--classifier-batch-clips", type=int, default=64, help="batch of both classifiers")
    parser.add_argument("--classifier-learning-rate", type=float, default=2e-3)
    parser.add_argument("--classifier-adversarial-l2", type=float, default=8.0,
                        help="L2 radius of the guiding classifier's adversarial training examples (0: off)")
    parser.add_argument("--classifier-noise", type=float, default=0.2, help="max pixel-noise std (guiding classifier)")
    parser.add_argument("--classifier-label-smoothing", type=float, default=0.1)
    parser.add_argument("--judge-seconds", type=float, default=45.0)
    parser.add_argument("--judge-steps", type=int, default=None)
    parser.add_argument("--eval-clips", type=int, default=2048)
    parser.add_argument("--sample-clips", type=int, default=256)
    parser.add_argument("--sample-steps", type=int, default=20)
    args = parser.parse_args(argv)
    args.train = [name.strip() for name in args.train.split(",") if name.strip()]
    unknown = sorted(set(args.train) - set(COMPONENTS))
    if unknown:
        parser.error(f"--train: unknown component(s) {unknown}; choose from {', '.join(COMPONENTS)}")
    if set(args.train) != set(COMPONENTS) and not args.reuse:
        parser.error("--reuse DIR is needed for the components not trained in this run")
    return args


def main(argv: list[str] | None = None) -> None:
    """Train the requested components, reuse the others, evaluate, and write the artefacts."""
    args = parse_arguments(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda requested but CUDA is not available; use --device cpu (with --quick)")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)

    robustness = RobustnessSettings(noise_max=args.classifier_noise, label_smoothing=args.classifier_label_smoothing,
                                    adversarial_l2=args.classifier_adversarial_l2)
    if args.quick:
        unet_settings = LoopSettings(steps=2, batch_clips=2, warmup_steps=2)
        classifier_settings = LoopSettings(steps=2, batch_clips=4, warmup_steps=2, learning_rate=1e-3)
        judge_settings = classifier_settings
        eval_clips, sample_clips, sample_steps = 16, 1, 2
    else:
        unet_settings = LoopSettings(steps=args.unet_steps, seconds=args.unet_seconds, batch_clips=args.unet_batch_clips,
                                     learning_rate=3e-4, warmup_steps=200)
        classifier_settings = LoopSettings(steps=args.classifier_steps, seconds=args.classifier_seconds,
                                           batch_clips=args.classifier_batch_clips,
                                           learning_rate=args.classifier_learning_rate, warmup_steps=100,
                                           weight_decay=0.05)
        judge_settings = LoopSettings(steps=args.judge_steps, seconds=args.judge_seconds,
                                      batch_clips=args.classifier_batch_clips,
                                      learning_rate=1e-3, warmup_steps=100, weight_decay=0.05)
        eval_clips, sample_clips, sample_steps = args.eval_clips, args.sample_clips, args.sample_steps

    record: dict = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "seed": args.seed,
        "quick": args.quick,
        "trained_now": args.train,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "schedule": {"beta_schedule": "scaled_linear", "beta_start": BETA_START, "beta_end": BETA_END,
                     "timesteps": NUM_TRAIN_TIMESTEPS, "prediction": "eps"},
        "codec": {"pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD, "latent_std": LATENT_STD},
    }
    if device.type != "cpu":
        record["world_cpu_vs_device"] = world_device_consistency(device)
        log(f"world CPU vs {device}: {record['world_cpu_vs_device']}")

    earlier: dict = {}
    if args.reuse:
        earlier_folder = Path(args.reuse)
        earlier = json.loads((earlier_folder / "embedded_training.json").read_text())
        record["earlier_run"] = earlier
        for name in COMPONENTS:
            if name in args.train:
                continue
            source, target = earlier_folder / FILENAMES[name], out / FILENAMES[name]
            if source.resolve() != target.resolve():
                shutil.copyfile(source, target)
            record[name] = dict(earlier[name])
            record[name].setdefault("trained_by", earlier["command"])

    # Classifiers first: they are quick, and the sample evaluation needs them.
    models = {}
    for role, architecture, settings, world_seed, seed_offset, role_robustness in (
            ("classifier", VideoAttributeClassifier, classifier_settings, CLASSIFIER_WORLD_SEED, 1, robustness),
            ("judge", VideoJudgeClassifier, judge_settings, JUDGE_WORLD_SEED, 2, RobustnessSettings())):
        if role in args.train:
            torch.manual_seed(args.seed + seed_offset)
            model = architecture().to(device)
            record[role] = train_classifier(model, settings, device, args.seed + seed_offset, world_seed, role, log,
                                            role_robustness)
            record[role]["parameters"] = count_parameters(model)
            save_classifier(model, out / FILENAMES[role], {"role": "guiding" if role == "classifier" else "judge"})
        else:
            model = load_classifier(out / FILENAMES[role], device)
        record[role]["held_out_accuracy"] = evaluate_classifier(model, HELD_OUT_WORLD_SEED, eval_clips, device)
        log(f"{role} held-out accuracy {record[role]['held_out_accuracy']}")
        models[role] = model

    if "unet" in args.train:
        torch.manual_seed(args.seed)
        if args.init_unet:
            unet = load_embedded_unet(args.init_unet, device)
            config = unet.config
        else:
            config = EmbeddedUNetConfig()
            unet = EmbeddedVideoUNet(config).to(device)
        ema, record["unet"] = train_unet(unet, unet_settings, device, args.seed, log)
        record["unet"]["initialised_from"] = Path(args.init_unet).name if args.init_unet else "random (seed)"
        record["unet"]["config"] = json.loads(config.to_json())
        record["unet"]["parameters"] = count_parameters(unet)
        record["unet"]["held_out_eps_mse_raw"] = round(held_out_diffusion_loss(unet, device), 5)
        record["unet"]["held_out_eps_mse_ema"] = round(held_out_diffusion_loss(ema.model, device), 5)
        log(f"unet held-out eps MSE raw {record['unet']['held_out_eps_mse_raw']} "
            f"ema {record['unet']['held_out_eps_mse_ema']}")
        save_embedded_unet(ema.model, out / FILENAMES["unet"], {"weights": "EMA"})
        sampler = ema.model
    else:
        sampler = load_embedded_unet(out / FILENAMES["unet"], device)

    record["ema_samples"] = evaluate_samples(sampler, models["judge"], models["classifier"], sample_clips, sample_steps,
                                             device)
    log(f"EMA samples: {record['ema_samples']}")
    record["total_wall_seconds"] = round(time.perf_counter() - started, 1)
    record["weight_files_bytes"] = {FILENAMES[name]: (out / FILENAMES[name]).stat().st_size for name in sorted(COMPONENTS)}
    (out / "embedded_training.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"done in {record['total_wall_seconds']} s; files {record['weight_files_bytes']}")


if __name__ == "__main__":
    main()
