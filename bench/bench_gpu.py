"""GPU speed and memory: comfykit's sampling against diffusers' pipelines on the same random weights of real sizes.

    python bench/bench_gpu.py [--only sd15,sdxl,flux] [--no-t4] [--no-append]

Cases (random weights, built on the GPU; no files, no hub):

* SD1.5-size UNet, fp16, 512x512, 20 euler steps, cfg 7.5;
* SDXL-size UNet, fp16, 1024x1024, 20 euler steps, cfg 7;
* FLUX.1-schnell-size transformer, bf16 compute, 1024x1024, 4 euler steps; comfykit stores the weights in fp8
  (UNETLoader's weight_dtype fp8_e4m3fn), diffusers runs them in bf16 as its pipeline does.

For each: it/s of comfykit's KSampler path and of the diffusers pipeline (``output_type="latent"``, no text encoders
or VAE: both get the same embeddings), their ratio (target >= 1.0), and peak VRAM. Then each comfykit case again in
a child process capped at 15 GB (``torch.cuda.set_per_process_memory_fraction``, a T4) with ``vram_budget=15``, which
must complete (partial loading where the weights do not fit). Needs a CUDA GPU: without one it exits at once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

CASES = {"sd15": dict(size=512, steps=20, cfg=7.5), "sdxl": dict(size=1024, steps=20, cfg=7.0),
         "flux": dict(size=1024, steps=4, cfg=1.0)}
T4_GB = 15


def _unet_config(case: str):
    from comfykit.engine.models.unet import UNetConfig

    if case == "sd15":
        return UNetConfig(model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=(2, 2, 2, 2),
                          transformer_depth=(1, 1, 1, 0), context_dim=768, num_heads=8)
    return UNetConfig(model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=(2, 2, 2), transformer_depth=(0, 2, 10),
                      transformer_depth_middle=10, context_dim=2048, num_head_channels=64, use_linear=True,
                      adm_in_channels=2816)


def build(case: str, device: str, fp8: bool):
    """(comfykit DiffusionModel, diffusers network, conditioning) sharing one set of random weights."""
    from comfykit.engine.models import fp8 as fp8_ops
    from comfykit.engine.models import keys
    from comfykit.engine.models.checkpoint import FAMILIES
    from comfykit.engine.models.diffusers_export import diffusers_unet_config
    from comfykit.engine.models.family import DiffusionModel

    family = next(f for f in FAMILIES if f.name == {"sd15": "sd1", "sdxl": "sdxl", "flux": "flux"}[case])
    if case == "flux":
        from diffusers import FluxTransformer2DModel

        dtype = torch.bfloat16
        config = dict(patch_size=1, in_channels=64, out_channels=64, num_layers=19, num_single_layers=38,
                      attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                      pooled_projection_dim=768, guidance_embeds=False, axes_dims_rope=(16, 56, 56))
        with torch.device(device):
            theirs = FluxTransformer2DModel(**config).to(dtype).eval()
        ours_net = family.build(config)  # FluxModel(transformer): wraps the same module class
        ours_net.transformer = theirs
        if fp8:  # a copy of the weights in fp8, as UNETLoader's weight_dtype makes them
            import copy

            ours_net.transformer = copy.deepcopy(theirs)
            fp8_ops.quantize_fp8(ours_net, torch.float8_e4m3fn, compute_dtype=dtype)
        cond = torch.randn(1, 256, 4096, device=device, dtype=dtype), torch.randn(1, 768, device=device, dtype=dtype)
        sampling = family.model_sampling(config, {}, {})
    else:
        from diffusers import UNet2DConditionModel

        dtype = torch.float16
        cfg = _unet_config(case)
        with torch.device(device):
            theirs = UNet2DConditionModel(**diffusers_unet_config(cfg)).to(dtype).eval()
        sd = keys.unet_diffusers_to_ldm(theirs.state_dict())
        with torch.device("meta"):
            ours_net = family.build(cfg)
        ours_net.load_state_dict(sd, assign=True)  # the same tensors: no second copy
        config = cfg
        width = 768 if case == "sd15" else 2048
        cond = torch.randn(1, 77, width, device=device, dtype=dtype), (
            torch.randn(1, 1280, device=device, dtype=dtype) if case == "sdxl" else None)
        sampling = family.model_sampling(cfg, {}, {"unet": {}})
    model = DiffusionModel(ours_net.eval(), family, config, sampling, name=case)
    return model, theirs, cond


def run_ours(model, case: str, cond, manager=None) -> float:
    """Seconds for one comfykit KSampler run (the same path as the KSampler node)."""
    from comfykit.engine.sampling.ksampler import common_ksampler

    c = CASES[case]
    text, pooled = cond
    options = {"pooled_output": pooled} if pooled is not None else {}
    if case == "sdxl":
        options["width"] = options["height"] = c["size"]
    positive, negative = [[text, options]], [[torch.zeros_like(text), dict(options)]]
    channels = 16 if case == "flux" else 4
    latent = {"samples": torch.zeros(1, channels, c["size"] // 8, c["size"] // 8)}
    sampler, scheduler = ("euler", "simple") if case == "flux" else ("euler", "normal")

    def go():
        return common_ksampler(model, 0, c["steps"], c["cfg"], sampler, scheduler, positive, negative, latent)

    torch.cuda.synchronize()
    start = time.perf_counter()
    manager.call(go, model) if manager is not None else go()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def run_diffusers(theirs, case: str, cond) -> float:
    """Seconds for one diffusers pipeline run on the same network, latents out."""
    import diffusers

    c = CASES[case]
    text, pooled = cond
    sched = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    common = dict(num_inference_steps=c["steps"], height=c["size"], width=c["size"], output_type="latent")
    if case == "flux":
        pipe = diffusers.FluxPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=None,
                                      text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                      transformer=theirs)
        call = lambda: pipe(prompt_embeds=text, pooled_prompt_embeds=pooled, guidance_scale=0.0, **common)  # noqa: E731
    elif case == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                                   tokenizer_2=None, unet=theirs, scheduler=sched)
        call = lambda: pipe(prompt_embeds=text, pooled_prompt_embeds=pooled, negative_prompt_embeds=torch.zeros_like(text),  # noqa: E731,E501
                            negative_pooled_prompt_embeds=torch.zeros_like(pooled), guidance_scale=c["cfg"], **common)
    else:
        pipe = diffusers.StableDiffusionPipeline(vae=None, text_encoder=None, tokenizer=None, unet=theirs,
                                                 scheduler=sched, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
        call = lambda: pipe(prompt_embeds=text, negative_prompt_embeds=torch.zeros_like(text),  # noqa: E731
                            guidance_scale=c["cfg"], **common)
    pipe.set_progress_bar_config(disable=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        call()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(case: str) -> dict:
    """Full-GPU comparison: best of 2 timed runs after a warm-up, each side; peak VRAM of comfykit's run."""
    model, theirs, cond = build(case, "cuda", fp8=case == "flux")
    steps = CASES[case]["steps"]
    run_ours(model, case, cond)
    torch.cuda.reset_peak_memory_stats()
    ours = min(run_ours(model, case, cond) for _ in range(2))
    peak = torch.cuda.max_memory_allocated()
    run_diffusers(theirs, case, cond)
    base = min(run_diffusers(theirs, case, cond) for _ in range(2))
    return {"case": case, "ours_its": steps / ours, "diffusers_its": steps / base, "peak_gb": peak / 2**30}


def measure_t4(case: str) -> dict:
    """In a fresh process: comfykit alone under a 15 GB cap, weights placed by a ModelManager with that budget."""
    from comfykit.engine.models.manager import ModelManager

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, T4_GB * 2**30 / total))
    model, theirs, cond = build(case, "cpu", fp8=case == "flux")  # weights start on the host, as after loading
    del theirs
    manager = ModelManager("cuda", vram="normal", budget=T4_GB * 2**30 - (2 << 30))  # 2 GB left to activations
    torch.cuda.reset_peak_memory_stats()
    seconds = run_ours(model, case, cond, manager)
    return {"case": case, "t4_its": CASES[case]["steps"] / seconds, "t4_peak_gb": torch.cuda.max_memory_allocated() / 2**30,
            "t4_placement": manager.resident()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="sd15,sdxl,flux")
    parser.add_argument("--no-t4", action="store_true")
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing was measured")
    if args.child:
        print(json.dumps(measure_t4(args.child)))
        return
    rows = []
    for case in args.only.split(","):
        row = measure(case)
        torch.cuda.empty_cache()
        if not args.no_t4:
            out = subprocess.run([sys.executable, __file__, "--child", case], capture_output=True, text=True)
            row.update(json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else
                       {"t4_error": (out.stderr.strip().splitlines() or ["?"])[-1]})
        rows.append(row)
        print(row, flush=True)
    name = torch.cuda.get_device_name(0)
    lines = [f"## GPU speed and memory (bench/bench_gpu.py), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "", f"{name}, torch {torch.__version__}. Random weights of the real sizes; it/s of one sampling run "
             "(best of 2 after a warm-up); T4 = a child process capped at 15 GB.", "",
             "| case | comfykit it/s | diffusers it/s | ratio | peak VRAM (GB) | T4 it/s | T4 peak (GB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t4 = (f"{r['t4_its']:.2f} | {r['t4_peak_gb']:.1f}" if "t4_its" in r else f"failed: {r.get('t4_error', 'not run')} |")
        lines.append(f"| {r['case']} | {r['ours_its']:.2f} | {r['diffusers_its']:.2f} | "
                     f"**{r['ours_its'] / r['diffusers_its']:.2f}** | {r['peak_gb']:.1f} | {t4} |")
    print("\n".join(lines))
    if not args.no_append:
        with open(ROOT / "docs" / "benchmarks.md", "a") as f:
            f.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
