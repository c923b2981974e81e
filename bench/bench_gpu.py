"""GPU speed and memory: comfykit's sampling against diffusers' pipelines on the same random weights of real sizes.

    python bench/bench_gpu.py [--only sd15,sdxl,flux] [--variants eager,compile,channels_last] [--no-t4]
                              [--no-append] [--tiny] [--compile-backend inductor]

Cases (random weights, built on the device; no files, no hub):

* SD1.5-size UNet, fp16, 512x512, 20 euler steps, cfg 7.5;
* SDXL-size UNet, fp16, 1024x1024, 20 euler steps, cfg 7;
* FLUX.1-schnell-size transformer, bf16 compute, 1024x1024, 4 euler steps; comfykit stores the weights in fp8
  (UNETLoader's weight_dtype fp8_e4m3fn), diffusers runs them in bf16 as its pipeline does.

For each: it/s of comfykit's KSampler path and of the diffusers pipeline (``output_type="latent"``, no text encoders
or VAE: both get the same embeddings), their ratio (target >= 1.0), and peak VRAM of comfykit's run. Variants of
comfykit's run: ``compile`` (``Engine(compile=True)``'s Compiler: compile seconds, then it/s) and ``channels_last``
(UNet cases). Then each case again in a child process capped at 15 GB (``torch.cuda.set_per_process_memory_fraction``,
a T4) with a ModelManager of that budget, which must complete (partial loading where the weights do not fit).

``--tiny`` runs every code path at toy size on whatever device there is (the CPU here): tiny random models of the
same families, 64x64, 2 steps, the "T4" child with a budget of half the model (so it streams). It measures nothing
worth recording and never appends to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
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
TINY = dict(size=64, steps=2)
VARIANTS = ("eager", "compile", "channels_last")
T4_GB = 15
FLUX_SCHNELL = dict(patch_size=1, in_channels=64, out_channels=64, num_layers=19, num_single_layers=38,
                    attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                    pooled_projection_dim=768, guidance_embeds=False, axes_dims_rope=(16, 56, 56))


def shape(case: str, tiny: bool) -> dict:
    """Size, steps and cfg of a case (toy size and steps with ``tiny``)."""
    return {**CASES[case], **(TINY if tiny else {})}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _unet_config(case: str, tiny: bool):
    from comfykit.engine.models.unet import UNetConfig

    if tiny:
        from comfykit.demo import _configs

        return _configs("sd1" if case == "sd15" else "sdxl")[0]
    if case == "sd15":
        return UNetConfig(model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=(2, 2, 2, 2),
                          transformer_depth=(1, 1, 1, 0), context_dim=768, num_heads=8)
    return UNetConfig(model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=(2, 2, 2), transformer_depth=(0, 2, 10),
                      transformer_depth_middle=10, context_dim=2048, num_head_channels=64, use_linear=True,
                      adm_in_channels=2816)


def build(case: str, device: torch.device, fp8: bool, tiny: bool = False):
    """(comfykit DiffusionModel, diffusers network, conditioning) sharing one set of random weights."""
    from comfykit.engine.models import fp8 as fp8_ops
    from comfykit.engine.models import keys
    from comfykit.engine.models.checkpoint import FAMILIES
    from comfykit.engine.models.diffusers_export import diffusers_unet_config
    from comfykit.engine.models.family import DiffusionModel

    family = next(f for f in FAMILIES if f.name == {"sd15": "sd1", "sdxl": "sdxl", "flux": "flux"}[case])
    gpu = device.type == "cuda"
    if case == "flux":
        from diffusers import FluxTransformer2DModel

        from comfykit.engine.models.tiny_dit import TINY_FLUX

        dtype = torch.bfloat16 if gpu else torch.float32
        config = ({**TINY_FLUX, "patch_size": 1, "in_channels": 64, "out_channels": 64, "guidance_embeds": False}
                  if tiny else FLUX_SCHNELL)
        with torch.device(device):
            theirs = FluxTransformer2DModel(**config).to(dtype).eval()
        with torch.device("meta"):  # FluxModel only wraps the transformer: no second 12B-parameter build
            ours_net = family.build(config)
        # fp8: a copy of the weights in fp8, as UNETLoader's weight_dtype makes them
        ours_net.transformer = copy.deepcopy(theirs) if fp8 else theirs
        if fp8:
            fp8_ops.quantize_fp8(ours_net, torch.float8_e4m3fn, compute_dtype=dtype)
        cond = (torch.randn(1, 16 if tiny else 256, config["joint_attention_dim"], device=device, dtype=dtype),
                torch.randn(1, config["pooled_projection_dim"], device=device, dtype=dtype))
        sampling = family.model_sampling(config, {}, {})
    else:
        from diffusers import UNet2DConditionModel

        dtype = torch.float16 if gpu else torch.float32
        cfg = _unet_config(case, tiny)
        with torch.device(device):
            theirs = UNet2DConditionModel(**diffusers_unet_config(cfg)).to(dtype).eval()
        sd = keys.unet_diffusers_to_ldm(theirs.state_dict())
        with torch.device("meta"):
            ours_net = family.build(cfg)
        ours_net.load_state_dict(sd, assign=True)  # the same tensors: no second copy
        config = cfg
        pooled = None
        if case == "sdxl":
            pooled = torch.randn(1, cfg.adm_in_channels - 6 * 256, device=device, dtype=dtype)
        cond = torch.randn(1, 77, cfg.context_dim, device=device, dtype=dtype), pooled
        sampling = family.model_sampling(cfg, {}, {"unet": {}})
    model = DiffusionModel(ours_net.eval(), family, config, sampling, name=case)
    return model, theirs, cond


def run_ours(model, case: str, cond, device: torch.device, tiny: bool, manager=None) -> float:
    """Seconds for one comfykit KSampler run (the same path as the KSampler node)."""
    from comfykit.engine.sampling.ksampler import common_ksampler

    c = shape(case, tiny)
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

    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        manager.call(go, model) if manager is not None else go()
    sync(device)
    return time.perf_counter() - start


def run_diffusers(theirs, case: str, cond, device: torch.device, tiny: bool) -> float:
    """Seconds for one diffusers pipeline run on the same network, latents out."""
    import diffusers

    c = shape(case, tiny)
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
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        call()
    sync(device)
    return time.perf_counter() - start


def _best(fn, repeats: int) -> float:
    fn()  # warm-up: kernels chosen, caches filled
    return min(fn() for _ in range(repeats))


def _peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure(case: str, device: torch.device, variants: tuple[str, ...], tiny: bool, backend: str,
            left=lambda: float("inf")) -> dict:
    """Full-device comparison: best of 2 timed runs after a warm-up for each side and variant.

    ``left()`` is the seconds left of the run's budget: the compile variant (minutes on a large model) is
    skipped when under two are left.
    """
    from comfykit.engine.compile import Compiler, to_channels_last

    repeats = 1 if tiny else 2
    model, theirs, cond = build(case, device, fp8=case == "flux", tiny=tiny)
    steps = shape(case, tiny)["steps"]
    if case == "flux" and device.type == "cuda":
        theirs.to("cpu")  # comfykit's own fp8 copy runs alone: its peak is its own
    row: dict = {"case": case, "device": str(device)}
    ours = lambda: run_ours(model, case, cond, device, tiny)  # noqa: E731
    _reset_peak(device)
    row["ours_its"] = steps / _best(ours, repeats)
    row["peak_gb"] = _peak(device)
    if "channels_last" in variants and case != "flux":  # the transformer has one convolution, if any
        to_channels_last(model.network)
        row["cl_its"] = steps / _best(ours, repeats)
        for p in model.network.parameters():  # back to the default layout for the other variants
            p.data = p.data.contiguous()
    if "compile" in variants and left() < 120:
        row["skipped"] = row.get("skipped", []) + ["compile"]
    elif "compile" in variants:
        model.compiled = Compiler({"backend": backend})
        row["compile_s"] = ours()  # the first run compiles
        row["compiled_its"] = steps / min(ours() for _ in range(repeats))
        row["compile_failed"] = dict(model.compiled.failed)
        model.compiled = None
    theirs.to(device)
    row["diffusers_its"] = steps / _best(lambda: run_diffusers(theirs, case, cond, device, tiny), repeats)
    return row


def measure_t4(case: str, device: torch.device, tiny: bool) -> dict:
    """In a fresh process: comfykit alone under a 15 GB cap, weights placed by a ModelManager with that budget.

    With ``tiny`` the budget is half the model's weights, so the partial-loading path runs.
    """
    from comfykit.engine.models.manager import ModelManager
    from comfykit.engine.models.offload import model_bytes

    # built on the device (fast random init), then moved to the host as after loading a file
    model, theirs, cond = build(case, device, fp8=case == "flux", tiny=tiny)
    del theirs
    model.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, T4_GB * 2**30 / total), device)
        budget = T4_GB * 2**30 - (2 << 30)  # 2 GB left to activations
    else:
        budget = model_bytes(model) // 2
    manager = ModelManager(device, vram="normal", budget=budget)
    _reset_peak(device)
    seconds = run_ours(model, case, cond, device, tiny, manager)
    return {"case": case, "t4_its": shape(case, tiny)["steps"] / seconds, "t4_peak_gb": _peak(device),
            "t4_placement": manager.resident()}


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict], device_name: str, tiny: bool) -> list[str]:
    """The markdown table of the rows."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"## GPU speed and memory (bench/bench_gpu.py{' --tiny' if tiny else ''}), {when}", "",
             f"{device_name}, torch {torch.__version__}. Random weights of the real sizes; it/s of one sampling run "
             "(best of 2 after a warm-up); compiled = torch.compile (first run, compile included, in brackets); "
             "T4 = a child process capped at 15 GB.", "",
             "| case | comfykit it/s | diffusers it/s | ratio | compiled it/s (first run s) | channels-last it/s "
             "| peak VRAM (GB) | T4 it/s | T4 peak (GB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        compiled = "-"
        if "compiled_its" in r:
            compiled = f"{r['compiled_its']:.2f} ({r['compile_s']:.0f})"
            if r.get("compile_failed"):
                compiled += " eager: compile failed"
        elif "compile" in r.get("skipped", []):
            compiled = "skipped: out of time"
        t4 = (f"{r['t4_its']:.2f} | {_fmt(r['t4_peak_gb'], 1)}" if "t4_its" in r else
              f"{r.get('t4_error', 'not run')} | -")
        lines.append(f"| {r['case']} | {r['ours_its']:.2f} | {r['diffusers_its']:.2f} | "
                     f"**{r['ours_its'] / r['diffusers_its']:.2f}** | {compiled} | {_fmt(r.get('cl_its'))} | "
                     f"{_fmt(r['peak_gb'], 1)} | {t4} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="sd15,sdxl,flux")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compile variant")
    parser.add_argument("--no-t4", action="store_true")
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="toy sizes on any device: exercises the code paths")
    parser.add_argument("--minutes", type=float, default=9.0,
                        help="time budget: the compile variant and the T4 runs are skipped when it runs short")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.tiny:
        sys.exit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing was measured. "
                 "--tiny runs its code paths at toy size on the CPU")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.child:
        print(json.dumps(measure_t4(args.child, device, args.tiny)))
        return
    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"--variants: unknown {', '.join(sorted(unknown))}; use {', '.join(VARIANTS)}")
    rows, start = [], time.perf_counter()

    def left() -> float:
        return args.minutes * 60 - (time.perf_counter() - start)

    for case in args.only.split(","):
        if case not in CASES:
            sys.exit(f"--only: unknown case {case!r}; use {', '.join(CASES)}")
        row = measure(case, device, variants, args.tiny, args.compile_backend, left)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if not args.no_t4 and left() < 60:
            row["t4_error"] = "skipped: out of time"
        elif not args.no_t4:
            child = [sys.executable, __file__, "--child", case] + (["--tiny"] if args.tiny else [])
            try:
                out = subprocess.run(child, capture_output=True, text=True, timeout=max(60.0, left()))
                row.update(json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else
                           {"t4_error": "failed: " + (out.stderr.strip().splitlines() or ["?"])[-1]})
            except subprocess.TimeoutExpired:
                row["t4_error"] = "killed: out of time"
        row["elapsed_s"] = time.perf_counter() - start
        rows.append(row)
        print(json.dumps(row), flush=True)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    lines = table(rows, name, args.tiny)
    print("\n".join(lines))
    if not args.no_append and not args.tiny:
        with open(ROOT / "docs" / "benchmarks.md", "a") as f:
            f.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
