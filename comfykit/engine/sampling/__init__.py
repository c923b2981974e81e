"""Sampling for the embedded engine, with ComfyUI 0.3.64's numerics.

- `latent_formats`: SD15/SDXL/SD3/Flux scale, shift, channels, latent2rgb factors, TAESD names.
- `schedulers`: model_sampling (discrete eps/v, flow) and the nine sigma schedulers (`calculate_sigmas`).
- `samplers` (+ `unipc`, `noise`): k-diffusion style `sample_<name>(model, x, sigmas, extra_args, callback)`.
- `ksampler`: `prepare_noise` and `common_ksampler` (denoise/start/end, CFG over area/mask conds, inpaint mask).
- `preview` (+ `taesd`): latent2rgb and TAESD previews as PIL images.
"""
