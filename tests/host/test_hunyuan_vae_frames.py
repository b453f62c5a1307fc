"""The frame rule the pack picks for the host's two vae_refiner VAEs, against their real decode's frame count.

ComfyUI builds HunyuanVideo 1.5's VAE (keys decoder.conv_in.conv.*) and HunyuanImage 2.1's refiner VAE (keys
decoder.conv_in.*, 5-D) as the same generic AutoencodingEngine around comfy.ldm.hunyuan_video.vae_refiner.Decoder,
with refiner_vae on for the video VAE and off for the refiner; ComfyUI's upscale_ratio says 1 + 4 (T - 1) frames for
both. Runs in a subprocess: comfy.sd.VAE detects each from a state dict on the meta device (full size, 1.26 B
parameters each, no memory), the decoder runs on meta latents (shapes only), and nodes/native_video.causal_time must
count the frames that decode gives.
"""

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]  # also run as a script, where testing/ is not importable
LATENT_FRAMES = (1, 2, 3, 4, 5)


def _check() -> dict:
    """Subprocess body: {vae: {"rule", "decoder", "decoded", "counted", "formula"}} over LATENT_FRAMES."""
    import torch

    from comfy.cli_args import args

    args.cpu = True
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    spec = importlib.util.spec_from_file_location("titan_guide_pack", REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["titan_guide_pack"] = pack
    spec.loader.exec_module(pack)
    native_video = importlib.import_module("titan_guide_pack.nodes.native_video")

    result = {}
    for name, video in (("hunyuanvideo15", True), ("hunyuanimage21_refiner", False)):
        config = {"block_out_channels": [128, 256, 512, 1024, 1024], "in_channels": 3, "out_channels": 3,
                  "num_res_blocks": 2, "ffactor_spatial": 16, "ffactor_temporal": 4, "z_channels": 32,
                  "downsample_match_channel": True, "upsample_match_channel": True}
        if not video:
            config["refiner_vae"] = False
        regularizer = "EmptyRegularizer" if video else "DiagonalGaussianRegularizer"
        with torch.device("meta"):  # the official files' key layout, as comfy/sd.py tells the two apart
            layout = AutoencodingEngine(
                regularizer_config={"target": f"comfy.ldm.models.autoencoder.{regularizer}"},
                encoder_config={"target": "comfy.ldm.hunyuan_video.vae_refiner.Encoder", "params": config},
                decoder_config={"target": "comfy.ldm.hunyuan_video.vae_refiner.Decoder", "params": config})
            vae = comfy.sd.VAE(sd={k: v.to(torch.float16) for k, v in layout.state_dict().items()})
        decoder = vae.first_stage_model.decoder
        decoded, counted = [], []
        for frames in LATENT_FRAMES:
            latent = torch.empty((1, 32, frames, 2, 2), device="meta", dtype=vae.vae_dtype)
            # the guided runs' attention (ComfyUI's sliced attention asks the meta device for free memory)
            with torch.inference_mode(), native_video.vae_attention_scope(vae):
                decoded.append(vae.first_stage_model.decode(latent).shape[2])  # what VAE.decode / VAEDecode return
            counted.append(native_video.causal_time(vae, latent.shape).decoded_frames(frames))
        result[name] = {"rule": native_video.frame_rule(vae), "engine": type(vae.first_stage_model).__name__,
                        "decoder": f"{type(decoder).__module__}.{type(decoder).__name__}",
                        "refiner_vae": decoder.refiner_vae, "decoded": decoded, "counted": counted,
                        "formula": [vae.upscale_ratio[0](t) for t in LATENT_FRAMES]}
    return result


def main(argv) -> int:
    """Subprocess entry: `python test_hunyuan_vae_frames.py COMFY_DIR` prints RESULT <json>."""
    here = os.path.dirname(os.path.abspath(__file__))
    comfy_dir = os.path.abspath(argv[1])
    # ComfyUI first (its top-level `nodes` must win over this repository's package); tests/ not at all
    sys.path[:] = [comfy_dir] + [p for p in sys.path if os.path.abspath(p or ".") not in (here, str(REPO_ROOT))]
    print("RESULT " + json.dumps(_check()))
    return 0


@pytest.fixture(scope="module")
def vae_frames(comfyui_dir):
    from testing.comfy_host import run_comfy_script

    return run_comfy_script(__file__, comfyui_dir)


def test_hunyuanvideo15_vae_decodes_1_plus_4_per_later_latent_frame_as_the_pack_counts(vae_frames):
    """The 1.5 video VAE: vae_refiner with refiner_vae on, T latent frames -> 1 + 4 (T - 1) frames ('causal', as
    ComfyUI's formula says)."""
    found = vae_frames["hunyuanvideo15"]
    assert (found["engine"], found["decoder"], found["refiner_vae"]) == (
        "AutoencodingEngine", "comfy.ldm.hunyuan_video.vae_refiner.Decoder", True)
    assert found["decoded"] == [1, 5, 9, 13, 17] == found["counted"] == found["formula"]
    assert found["rule"] == "causal"


def test_hunyuanimage21_refiner_vae_decodes_4_per_latent_frame_as_the_pack_counts(vae_frames):
    """The same engine and decoder class with refiner_vae off: 4 frames per latent frame (one for a single latent
    frame), not ComfyUI's formula; the pack follows the decode ('uniform', picked by the decoder's config)."""
    found = vae_frames["hunyuanimage21_refiner"]
    assert (found["engine"], found["decoder"], found["refiner_vae"]) == (
        "AutoencodingEngine", "comfy.ldm.hunyuan_video.vae_refiner.Decoder", False)
    assert found["decoded"] == [1, 8, 12, 16, 20] == found["counted"]
    assert found["formula"] == [1, 5, 9, 13, 17]
    assert found["rule"] == "uniform"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
