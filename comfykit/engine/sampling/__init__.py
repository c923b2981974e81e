"""Sampling for the embedded engine, with ComfyUI 0.3.64's numerics.

- `latent_formats`: SD15/SDXL/SD3/Flux scale, shift, channels, latent2rgb factors, TAESD names.
- `schedulers`: model_sampling (discrete eps/v, flow) and the nine sigma schedulers (`calculate_sigmas`).
- `samplers` (+ `unipc`, `noise`): k-diffusion style `sample_<name>(model, x, sigmas, extra_args, callback)`.
- `guiders`: the GUIDER type (CFG, Basic, DualCFG) and its per-run denoiser over area/mask-weighted conds.
- `ksampler`: NOISE (`RandomNoise`, `DisabledNoise`), SAMPLER (`Sampler`), `sample_latent` (the one sampling path,
  with the inpaint noise mask) and `common_ksampler` (KSampler's denoise/start/end sigmas on it).
- `preview` (+ `taesd`): latent2rgb and TAESD previews as PIL images.
"""
