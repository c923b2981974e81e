"""Host RAM while loading: peak RSS against the file size, for an SDXL-size checkpoint and a FLUX.1-size fp8 file.

    python bench/bench_memory.py [--dir /tmp/comfykit-bench-memory] [--only sdxl|flux] [--keep] [--no-append]

Each file is written tensor by tensor with random weights of the real shapes (a safetensors header, then the raw
bytes streamed, so the writer never holds the model either), then loaded in a fresh process that reports:

* peak RSS while loading and touching every weight page, above the process's RSS before the load;
* the RSS after loading (the model as it stays resident);
* the loaded weights' bytes (on CPU the SDXL text encoders and VAE are upcast to fp32, the UNet is loaded in fp16).

Target: peak / file <= 1.3. The table goes to stdout and is appended to docs/benchmarks.md. The files (6.9 and
~12 GB) are deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

ST_NAMES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float8_e4m3fn: "F8_E4M3"}


# -- writing big random files without holding them ----------------------------------------------------------------
def write_streaming(path: Path, specs: dict[str, tuple[tuple[int, ...], torch.dtype]], seed: int = 0) -> int:
    """A safetensors file of random tensors `{name: (shape, dtype)}`, generated and written one at a time."""
    header, offset = {}, 0
    for name, (shape, dtype) in specs.items():
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        header[name] = {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    g = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for shape, dtype in specs.values():
            n = torch.Size(shape).numel()
            for start in range(0, n, 1 << 26):  # 64M values at a time
                count = min(1 << 26, n - start)
                if dtype in (torch.float8_e4m3fn,):
                    # bytes below 0x70 are finite positive e4m3 values (0x7f is NaN)
                    chunk = torch.randint(0, 0x70, (count,), dtype=torch.uint8, generator=g)
                else:
                    chunk = (torch.randn(count, generator=g) * 0.02).to(dtype).view(torch.uint8)
                f.write(memoryview(chunk.numpy()))
    return path.stat().st_size


def sdxl_specs() -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every tensor of an SDXL base checkpoint (ComfyUI/SAI layout), fp16."""
    from comfykit.engine.models import keys
    from comfykit.engine.models.clip import CLIPConfig, CLIPTextModel
    from comfykit.engine.models.unet import UNetConfig, UNetModel
    from comfykit.engine.models.vae import AutoencoderKL, VAEConfig

    unet = UNetConfig(model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=(2, 2, 2), transformer_depth=(0, 2, 10),
                      transformer_depth_middle=10, context_dim=2048, num_head_channels=64, use_linear=True,
                      adm_in_channels=2816)
    clip_l = CLIPConfig(width=768, layers=12, heads=12, intermediate=3072)
    clip_g = CLIPConfig(width=1280, layers=32, heads=20, intermediate=5120, projection_dim=1280, activation="gelu")
    with torch.device("meta"):
        parts = {"model.diffusion_model.": UNetModel(unet).state_dict(),
                 "first_stage_model.": AutoencoderKL(VAEConfig(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2,
                                                               z_channels=4)).state_dict(),
                 "conditioner.embedders.0.transformer.": CLIPTextModel(clip_l).state_dict(),
                 "conditioner.embedders.1.model.": keys.hf_to_openclip(CLIPTextModel(clip_g).state_dict(), 32)}
    return {prefix + k: (tuple(v.shape), torch.float16) for prefix, sd in parts.items() for k, v in sd.items()}


def flux_specs() -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every tensor of a FLUX.1 schnell transformer (BFL layout) as ComfyUI's scaled fp8: fp8 Linear weights
    with their scale_weight / scale_input, bf16 biases and norms."""
    from diffusers import FluxTransformer2DModel

    from comfykit.engine.models.tiny_dit import flux_diffusers_to_bfl

    with torch.device("meta"):
        model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                       attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                       pooled_projection_dim=768, guidance_embeds=False, axes_dims_rope=(16, 56, 56))
        sd = flux_diffusers_to_bfl(model.state_dict())
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for key, value in sd.items():
        if key.endswith(".weight") and value.ndim == 2:
            specs[key] = (tuple(value.shape), torch.float8_e4m3fn)
            specs[key[: -len("weight")] + "scale_weight"] = ((), torch.float32)
            specs[key[: -len("weight")] + "scale_input"] = ((), torch.float32)
        else:
            specs[key] = (tuple(value.shape), torch.bfloat16)
    specs["scaled_fp8"] = ((0,), torch.float8_e4m3fn)
    return specs


# -- measuring in a fresh process ---------------------------------------------------------------------------------
def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _touch(module: torch.nn.Module) -> int:
    """Read one byte of every page of every weight (so mapped pages count as resident); returns the weight bytes."""
    seen, total = set(), 0
    for t in (*module.parameters(), *module.buffers()):
        if t.data_ptr() in seen or t.numel() == 0:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
        flat = t.detach().reshape(-1).view(torch.uint8)
        int(flat[::4096].sum()) if flat.numel() else 0
    return total


def measure(kind: str, path: str) -> dict[str, float]:
    """Runs in the child: load `path`, touch it, report RSS numbers."""
    from comfykit.engine.models.checkpoint import load_checkpoint, load_diffusion_model

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    before = _status()["VmRSS"]
    start = time.perf_counter()
    if kind == "sdxl":
        model, clip, vae = load_checkpoint(path, device="cpu", dtype=torch.float16)
        modules = [model.network, *clip.clips.values(), vae.module]
    else:
        model = load_diffusion_model(path, device="cpu")
        modules = [model.network]
    seconds = time.perf_counter() - start
    weights = sum(_touch(m) for m in modules)
    after = _status()
    return {"before": before, "peak": after["VmHWM"] - before, "resident": after["VmRSS"] - before,
            "weights": weights, "seconds": seconds}


def run_child(kind: str, path: Path) -> dict[str, float]:
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from bench.bench_memory import measure; "
            f"print(json.dumps(measure({kind!r}, {str(path)!r})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="/tmp/comfykit-bench-memory")
    parser.add_argument("--only", choices=("sdxl", "flux"))
    parser.add_argument("--keep", action="store_true", help="keep the big files")
    parser.add_argument("--no-append", action="store_true", help="do not append to docs/benchmarks.md")
    args = parser.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    cases = {"sdxl": ("SDXL-size checkpoint, fp16 (load_checkpoint, dtype=fp16)", sdxl_specs),
             "flux": ("FLUX.1-size transformer, scaled fp8 (load_diffusion_model)", flux_specs)}
    rows = []
    for kind, (label, specs) in cases.items():
        if args.only and kind != args.only:
            continue
        path = folder / f"{kind}.safetensors"
        t0 = time.perf_counter()
        size = write_streaming(path, specs())
        written = time.perf_counter() - t0
        try:
            r = run_child(kind, path)
        finally:
            if not args.keep:
                path.unlink()
        rows.append((label, size, r, written))
        print(f"{label}: file {size / 1e9:.2f} GB (written in {written:.0f} s), load {r['seconds']:.1f} s, peak RSS "
              f"{r['peak'] / 1e9:.2f} GB = {r['peak'] / size:.2f}x file, resident {r['resident'] / 1e9:.2f} GB, "
              f"weights {r['weights'] / 1e9:.2f} GB", flush=True)
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [f"## Host RAM while loading (bench/bench_memory.py), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "", f"{platform.machine()}, {os.cpu_count()} CPU cores, {mem_gb:.0f} GiB RAM, Python "
             f"{platform.python_version()}, torch {torch.__version__}. Random weights of the real shapes, written "
             "tensor by tensor; loaded in a fresh process that then reads a byte of every weight page. Peak RSS is "
             "VmHWM above the RSS before the load.", "",
             "| file | size (GB) | load (s) | peak RSS (GB) | peak / file | resident after (GB) | weights (GB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, size, r, _ in rows:
        lines.append(f"| {label} | {size / 1e9:.2f} | {r['seconds']:.1f} | {r['peak'] / 1e9:.2f} | "
                     f"**{r['peak'] / size:.2f}** | {r['resident'] / 1e9:.2f} | {r['weights'] / 1e9:.2f} |")
    lines += ["", "Target: peak / file <= 1.3. On CPU the SDXL text encoders and VAE run in fp32, so that load ends "
              "with more weight bytes than the file holds; the UNet stays fp16, mapped from the file.", ""]
    print("\n".join(lines))
    if not args.no_append and rows:
        with open(ROOT / "docs" / "benchmarks.md", "a") as f:
            f.write("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
