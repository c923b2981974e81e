"""Sampling for the embedded engine: latent formats, schedules, k-diffusion style samplers, CFG, previews."""
