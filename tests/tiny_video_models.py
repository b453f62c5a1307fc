"""Tiny random-init checkpoints of ComfyUI's native video models (Wan, CogVideoX, LTX-Video, LTX-2, HunyuanVideo 1.5) in
files' key layouts, for host tests.

Built from ComfyUI's own classes (comfy.ldm.wan.model.WanModel, comfy.ldm.wan.vae.WanVAE,
comfy.ldm.wan.vae2_2.WanVAE, comfy.ldm.cogvideo.model.CogVideoXTransformer3DModel,
comfy.ldm.cogvideo.vae.AutoencoderKLCogVideoX, comfy.ldm.lightricks: LTXVModel, LTXAVModel, VideoVAE, AudioVAE,
comfy.ldm.hunyuan_video.model.HunyuanVideo, the comfy.ldm.hunyuan_video.vae_refiner AutoencodingEngine) on the
meta device, filled deterministically and saved as safetensors with the
keys of the official files (`wan2.1_t2v_1.3B_fp16.safetensors` in diffusion_models/, `wan_2.1_vae.safetensors`
in vae/, ...), so ComfyUI's UNETLoader / VAELoader detect them as the real families:

| file | what ComfyUI detects |
|---|---|
| tiny_wan21_t2v.safetensors | WAN21_T2V (16 latent channels; dim 128 = 1 head, 1 block) |
| tiny_wan22_ti2v.safetensors | WAN22_T2V, the Wan 2.2 5B TI2V family (48 channels in and out) |
| tiny_wan22_high.safetensors / tiny_wan22_low.safetensors | two WAN21_T2V experts (Wan 2.2 14B's pair has the Wan 2.1 architecture) |
| tiny_wan21_vae.safetensors | the Wan 2.1 VAE (4x time, 8x space, 16 channels), 8 base channels |
| tiny_wan22_vae.safetensors | the Wan 2.2 VAE (4x time, 16x space, 48 channels); ComfyUI builds it from a fixed config, so it is full size |
| tiny_cogvideox_t2v.safetensors | CogVideoX_T2V (V_PREDICTION_DDPM; 2 heads x 64 = dim 128, 1 block, rotary positions as CogVideoX 5B) |
| tiny_cogvideox_vae.safetensors | the CogVideoX VAE (4x time, 8x space, 16 channels); built by ComfyUI from a fixed config: full size (216 M) |
| tiny_ltxv.safetensors | LTXV (LTX-Video; 128 latent channels; 32 heads x 4 = dim 128, 1 block) |
| tiny_ltxv_vae.safetensors | LTX's VideoVAE (8x time, 32x space, 128 channels; LTXV and LTX-2), 32 decoder / 8 encoder base channels: its config rides in the file's metadata (`config` -> `vae`), which comfy/sd.py reads |
| tiny_ltx2_av.safetensors | LTXAV (LTX-2 audio+video; 128 video channels, audio 8 x 16 mel bins; video 32 heads x 4, audio 2 heads x 32, 1 block, 1-layer text connectors 12 heads x 64) |
| tiny_ltx2_audio_vae.safetensors (checkpoints/) | LTX-2's audio VAE and vocoder (8 base channels), config in metadata as ComfyUI's LTXVAudioVAELoader reads it |
| tiny_hunyuan15_t2v.safetensors | HunyuanVideo15 (65 channels in: 32 noise + 32 image + mask; 32 out; hidden 128 = 1 head, 1 double + 1 single block; the SigLIP projection vision_in that ComfyUI detects 1.5 by; no ByT5 mapper) |
| tiny_hunyuan15_vae.safetensors | the HunyuanVideo 1.5 VAE (4x time, 16x space, 32 channels; keys decoder.conv_in.conv.*, so ComfyUI builds vae_refiner with its causal first frame); fixed config: full size (1.26 B, 2.5 GB fp16) |

The diffusion models' text projection takes 768-wide context (Wan, LTXV, LTX-2: safetensors metadata `config`, which
ComfyUI's model detection reads; CogVideoX: the shape of patch_embed.text_proj; HunyuanVideo 1.5:
txt_in.input_embedder's width), so the tiny SD1.5 checkpoint's CLIP-L encodes prompts: UMT5-XXL has a fixed 5.7 B
configuration that cannot be made tiny (as T5-XXL for CogVideoX and LTXV, Gemma 3 12B for LTX-2, Qwen2.5-VL 7B +
ByT5 for HunyuanVideo 1.5). Runs as a script (ComfyUI importable only in the subprocess).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_checkpoints import _fill_random_, _norm_param_names, comfyui_version, read_metadata  # noqa: E402

FORMAT_VERSION = "1"
TEXT_DIM = 768  # CLIP-L's width (the tiny SD1.5 checkpoint's text encoder)
WAN_DIM = 128  # ComfyUI detects num_heads = dim // 128
# file name -> (folder, kind, seed offset)
FILES = {
    "tiny_wan21_t2v.safetensors": ("diffusion_models", "wan21", 0),
    "tiny_wan22_ti2v.safetensors": ("diffusion_models", "wan22_5b", 1),
    "tiny_wan22_high.safetensors": ("diffusion_models", "wan21", 2),
    "tiny_wan22_low.safetensors": ("diffusion_models", "wan21", 3),
    "tiny_wan21_vae.safetensors": ("vae", "vae21", 4),
    "tiny_wan22_vae.safetensors": ("vae", "vae22", 5),
    "tiny_cogvideox_t2v.safetensors": ("diffusion_models", "cogvideox", 6),
    "tiny_cogvideox_vae.safetensors": ("vae", "cogvideox_vae", 7),
    "tiny_ltxv.safetensors": ("diffusion_models", "ltxv", 8),
    "tiny_ltxv_vae.safetensors": ("vae", "ltxv_vae", 9),
    "tiny_ltx2_av.safetensors": ("diffusion_models", "ltx2", 10),
    "tiny_ltx2_audio_vae.safetensors": ("checkpoints", "ltx2_audio_vae", 11),
    "tiny_hunyuan15_t2v.safetensors": ("diffusion_models", "hunyuan15", 8),  # 8, 9 as when tested
    "tiny_hunyuan15_vae.safetensors": ("vae", "hunyuan15_vae", 9),
}
# LTX's VideoVAE with the block layout of ComfyUI's version-0 default (three 2x2x2 'compress_all' blocks and a
# patch size of 4: 8x time, 32x space) at 8 channels instead of 128; ComfyUI reads it from the file's metadata
LTXV_VAE_CONFIG = {"_class_name": "CausalVideoAutoencoder", "dims": 3, "in_channels": 3, "out_channels": 3,
                   "latent_channels": 128, "encoder_base_channels": 8, "decoder_base_channels": 32,
                   "blocks": [["res_x", 1], ["compress_all", 1], ["compress_all", 1], ["compress_all", 1],
                              ["res_x", 1]],
                   "scaling_factor": 1.0, "norm_layer": "pixel_norm", "patch_size": 4, "latent_log_var": "uniform",
                   "use_quant_conv": False, "causal_decoder": False}
# ComfyUI detects LTXV's heads as 32 and the head width from attn2.to_k; the caption projection's input width comes
# from metadata (LTXV's own: 4096, T5-XXL)
LTXV_TRANSFORMER_CONFIG = {"caption_channels": TEXT_DIM}
# LTX-2: the text connectors (12 heads x 64 = CLIP-L's 768) and the audio stream come from metadata too; ComfyUI
# detects the video heads (32) and width from attn2.to_k as for LTXV
LTX2_TRANSFORMER_CONFIG = {"caption_channels": TEXT_DIM, "audio_cross_attention_dim": 64,
                           "audio_attention_head_dim": 32, "audio_num_attention_heads": 2,
                           "connector_attention_head_dim": 64, "connector_num_attention_heads": 12,
                           "connector_num_layers": 1}
# LTX-2's audio VAE (mel 64 bins -> 16 latent bins, 8 latent channels, 4x time) and HiFi-GAN vocoder at 8 channels
LTX2_AUDIO_CONFIG = {
    "audio_vae": {"model": {"params": {"sampling_rate": 16000, "ddconfig": {
        "double_z": True, "mel_bins": 64, "z_channels": 8, "resolution": 256, "downsample_time": False,
        "in_channels": 2, "out_ch": 2, "ch": 8, "ch_mult": [1, 2, 4], "num_res_blocks": 1, "attn_resolutions": [],
        "dropout": 0.0, "mid_block_add_attention": False, "norm_type": "pixel", "causality_axis": "height"}}},
        "preprocessing": {"stft": {"filter_length": 1024, "hop_length": 160}}},
    "vocoder": {"resblock_kernel_sizes": [3], "upsample_rates": [5, 4, 2, 2, 2],
                "upsample_kernel_sizes": [16, 16, 8, 4, 4], "resblock_dilation_sizes": [[1, 3, 5]],
                "upsample_initial_channel": 32, "stereo": True, "output_sample_rate": 24000}}
LTX_NAMES = ("tiny_ltxv.safetensors", "tiny_ltxv_vae.safetensors", "tiny_ltx2_av.safetensors",
             "tiny_ltx2_audio_vae.safetensors")  # built for tests/host/test_ltx.py's own host only
METADATA_KEY = "titan_guide_tiny_wan"  # the key of the first files (Wan); kept so caches stay valid


def expected_metadata(name: str, seed: int, comfy_dir) -> dict:
    identity = {"file": name, "seed": seed, "format": FORMAT_VERSION, "comfyui": comfyui_version(comfy_dir)}
    if name in LTX_NAMES:  # their configs live in this file: a changed config rebuilds them
        identity["config"] = {"tiny_ltxv.safetensors": LTXV_TRANSFORMER_CONFIG, "tiny_ltxv_vae.safetensors":
                              LTXV_VAE_CONFIG, "tiny_ltx2_av.safetensors": LTX2_TRANSFORMER_CONFIG,
                              "tiny_ltx2_audio_vae.safetensors": LTX2_AUDIO_CONFIG}[name]
    return {METADATA_KEY: json.dumps(identity, sort_keys=True)}


def build_tiny_video_files(comfy_dir, cache_dir, seed: int = 0, python=None, timeout: float = 900,
                           names=None) -> dict:
    """Write (or reuse) the files `names` of FILES (default: all) under cache_dir; returns {name: path}."""
    cache_dir = Path(cache_dir)
    paths = {name: cache_dir / name for name in (FILES if names is None else names)}
    stale = [name for name, path in paths.items()
             if not path.is_file() or read_metadata(path).get(METADATA_KEY)
             != expected_metadata(name, seed, comfy_dir)[METADATA_KEY]]
    if stale:
        cache_dir.mkdir(parents=True, exist_ok=True)
        command = [python or sys.executable, os.path.abspath(__file__), "--comfy-dir", str(comfy_dir),
                   "--out-dir", str(cache_dir), "--seed", str(seed), *stale]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"building tiny video model files failed (exit {result.returncode}):\n{result.stdout}\n"
                               f"{result.stderr}")
    return paths


def _module(kind: str):
    import comfy.ldm.wan.model
    import comfy.ldm.wan.vae
    import comfy.ldm.wan.vae2_2
    import comfy.ops
    import torch

    with torch.device("meta"):
        if kind == "hunyuan15":  # ComfyUI detects heads = hidden // 128 and 1.5 by vision_in (SigLIP, 1152 wide)
            import comfy.ldm.hunyuan_video.model
            return comfy.ldm.hunyuan_video.model.HunyuanVideo(
                image_model="hunyuan_video", in_channels=65, out_channels=32, vec_in_dim=None, context_in_dim=TEXT_DIM,
                hidden_size=128, mlp_ratio=4.0, num_heads=1, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56],
                theta=256, patch_size=[1, 1, 1], qkv_bias=True, guidance_embed=False, byt5=False, meanflow=False,
                use_cond_type_embedding=True, vision_in_dim=1152, meanflow_sum=True,
                operations=comfy.ops.disable_weight_init)
        if kind == "hunyuan15_vae":  # comfy/sd.py builds it with this fixed config (refiner_vae left at True)
            from comfy.ldm.models.autoencoder import AutoencodingEngine
            config = {"block_out_channels": [128, 256, 512, 1024, 1024], "in_channels": 3, "out_channels": 3,
                      "num_res_blocks": 2, "ffactor_spatial": 16, "ffactor_temporal": 4, "z_channels": 32,
                      "downsample_match_channel": True, "upsample_match_channel": True}
            return AutoencodingEngine(
                regularizer_config={"target": "comfy.ldm.models.autoencoder.EmptyRegularizer"},
                encoder_config={"target": "comfy.ldm.hunyuan_video.vae_refiner.Encoder", "params": config},
                decoder_config={"target": "comfy.ldm.hunyuan_video.vae_refiner.Decoder", "params": config})
        if kind in ("wan21", "wan22_5b"):
            channels = 48 if kind == "wan22_5b" else 16
            return comfy.ldm.wan.model.WanModel(
                model_type="t2v", in_dim=channels, out_dim=channels, dim=WAN_DIM, ffn_dim=256, num_heads=1,
                num_layers=1, text_dim=TEXT_DIM, operations=comfy.ops.disable_weight_init)
        if kind.startswith("cogvideox"):  # ComfyUI >= 0.3x (native CogVideoX, spring 2026)
            import comfy.ldm.cogvideo.model
            import comfy.ldm.cogvideo.vae
        if kind == "cogvideox":  # ComfyUI detects heads = dim // 64 and rotary positions (no pos_embedding key)
            return comfy.ldm.cogvideo.model.CogVideoXTransformer3DModel(
                num_attention_heads=2, attention_head_dim=64, time_embed_dim=64, text_embed_dim=TEXT_DIM,
                num_layers=1, use_rotary_positional_embeddings=True, operations=comfy.ops.disable_weight_init)
        if kind == "cogvideox_vae":  # comfy/sd.py builds it with this default config
            return comfy.ldm.cogvideo.vae.AutoencoderKLCogVideoX(latent_channels=16)
        if kind == "ltxv":
            import comfy.ldm.lightricks.model
            return comfy.ldm.lightricks.model.LTXVModel(
                in_channels=128, cross_attention_dim=128, attention_head_dim=4, num_attention_heads=32,
                caption_channels=TEXT_DIM, num_layers=1, operations=comfy.ops.disable_weight_init)
        if kind == "ltx2":
            import comfy.ldm.lightricks.av_model
            return comfy.ldm.lightricks.av_model.LTXAVModel(
                in_channels=128, audio_in_channels=128, cross_attention_dim=128, attention_head_dim=4,
                num_attention_heads=32, num_layers=1, **LTX2_TRANSFORMER_CONFIG,
                operations=comfy.ops.disable_weight_init)
        if kind == "ltx2_audio_vae":
            import comfy.ldm.lightricks.vae.audio_vae
            return comfy.ldm.lightricks.vae.audio_vae.AudioVAE(metadata={"config": json.dumps(LTX2_AUDIO_CONFIG)})
        if kind == "ltxv_vae":
            import comfy.ldm.lightricks.vae.causal_video_autoencoder
            return comfy.ldm.lightricks.vae.causal_video_autoencoder.VideoVAE(config=LTXV_VAE_CONFIG)
        if kind == "vae21":
            return comfy.ldm.wan.vae.WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                            temperal_downsample=[False, True, True])
        # comfy/sd.py builds the Wan 2.2 VAE from this fixed config (only the key layout is read from the file)
        return comfy.ldm.wan.vae2_2.WanVAE(dim=160, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                           attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)


def _build(out_dir: Path, names, seed: int, comfy_dir) -> None:
    import torch
    from comfy.cli_args import args

    args.cpu = True
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)

    for name in names:
        folder, kind, offset = FILES[name]
        module = _module(kind)
        state = _fill_random_(module.state_dict(), _norm_param_names(module, ""), seed * 1000 + offset,
                              torch.float16 if "vae" in kind else torch.float32)
        if kind == "ltx2_audio_vae":  # ComfyUI's loader reads the autoencoder under 'audio_vae.'; statistics: identity
            state = {("audio_vae." + k[len("autoencoder."):] if k.startswith("autoencoder.") else k): v
                     for k, v in state.items()}
            stats = [k for k in state if "per_channel_statistics" in k]
            state.update({k: (torch.ones_like if "std" in k else torch.zeros_like)(state[k]) for k in stats})
        if kind == "ltxv_vae":  # latent statistics: identity (the real file's are per-channel means and stds)
            state["per_channel_statistics.std-of-means"] = torch.ones(128, dtype=torch.float16)
            state["per_channel_statistics.mean-of-means"] = torch.zeros(128, dtype=torch.float16)
        if kind.startswith("vae") or kind == "hunyuan15_vae":  # RMS_norm gammas (not torch norms): 1, as initialised
            state = {k: torch.ones_like(v) if k.endswith("gamma") else v for k, v in state.items()}
        elif kind in ("wan21", "wan22_5b"):  # Wan's own init of the modulation tables is small random: adaLN near identity
            state = {k: v * 0.02 if "modulation" in k else v for k, v in state.items()}
        elif kind in ("ltxv", "ltx2"):  # the same for LTX's adaLN tables
            state = {k: v * 0.02 if "scale_shift_table" in k or "adaln_single.linear" in k else v
                     for k, v in state.items()}
        elif kind == "cogvideox":  # the same for CogVideoX's adaLN-zero tables
            state = {k: v * 0.02 if k.startswith(("blocks.", "norm_out")) and ".linear." in k and "norm" in k else v
                     for k, v in state.items()}
        elif kind == "hunyuan15":  # adaLN tables small (near identity); q / k RMSNorm scales 1, as initialised
            state = {k: v * 0.02 if "modulation" in k or "_mod." in k else
                     torch.ones_like(v) if k.endswith(("query_norm.weight", "key_norm.weight")) else v
                     for k, v in state.items()}
        metadata = expected_metadata(name, seed, comfy_dir)
        if kind.startswith("wan"):
            metadata["config"] = json.dumps({"transformer": {"text_dim": TEXT_DIM}})
        elif kind == "ltxv":
            metadata["config"] = json.dumps({"transformer": LTXV_TRANSFORMER_CONFIG})
        elif kind == "ltxv_vae":
            metadata["config"] = json.dumps({"vae": LTXV_VAE_CONFIG})
        elif kind == "ltx2":
            metadata["config"] = json.dumps({"transformer": LTX2_TRANSFORMER_CONFIG})
        elif kind == "ltx2_audio_vae":
            metadata["config"] = json.dumps(LTX2_AUDIO_CONFIG)
        tmp = out_dir / f"{name}.{os.getpid()}.partial"
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, out_dir / name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfy-dir", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("names", nargs="*", default=list(FILES))
    options = parser.parse_args(argv)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.path.abspath(options.comfy_dir))
    sys.path.append(here)  # tiny_checkpoints' helpers were imported above; ComfyUI's modules come first
    _build(Path(options.out_dir), options.names, options.seed, options.comfy_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
