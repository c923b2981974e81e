"""Custom sampling nodes: the SAMPLER, SIGMAS, NOISE and GUIDER parts of a sampler, and the nodes that run them.

SAMPLER is a :class:`comfykit.engine.sampling.ksampler.Sampler`, SIGMAS a 1-D float tensor ending in 0, NOISE an
object with ``.seed`` and ``generate_noise(latent)``, GUIDER a :mod:`comfykit.engine.sampling.guiders` object
holding the model and its conditionings. SamplerCustomAdvanced with RandomNoise, CFGGuider, KSamplerSelect and
BasicScheduler is KSampler: both run ``ksampler.sample_latent``.
"""

from __future__ import annotations

from typing import Any

from .base import BOOLEAN, COMBO, FLOAT, INT, LINK, MAX_SEED, Node
from .sampling import SAMPLER_NAMES, SCHEDULER_NAMES, step_callback

_MODULE = "comfy_extras.nodes_custom_sampler"
_CFG = FLOAT(8.0, 0.0, 100.0, 0.1, "Classifier-free guidance scale.", round=0.01)
_DENOISE = FLOAT(1.0, 0.0, 1.0, 0.01, "Fraction of the schedule to run (1 = from pure noise).")
_SEED = INT(0, 0, MAX_SEED, tip="Noise seed.", control_after_generate=True)


def _run(node: Node, guider: Any, sampler: Any, sigmas: Any, latent: dict, noise: Any,
         seed: int | None = None) -> tuple[dict, dict]:
    from ..engine.models.controlnet import control_models
    from ..engine.sampling.ksampler import sample_latent

    node.check_interrupt()
    callback = step_callback(node, guider.model)
    return node.call_with(lambda: sample_latent(guider, sampler, sigmas, latent, noise, seed, callback),
                          guider.model, *control_models(*guider.conds.values()))


class KSamplerSelect(Node):
    """Picks a sampling algorithm by name (a SAMPLER for SamplerCustom)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "KSamplerSelect", "sampling/custom_sampling/samplers", _MODULE
    INPUTS = {"sampler_name": COMBO(SAMPLER_NAMES, "Sampling algorithm.")}
    OUTPUTS = ("SAMPLER",)
    FUNCTION = "get_sampler"

    def get_sampler(self, sampler_name: str) -> tuple[Any]:
        from ..engine.sampling.ksampler import Sampler

        return (Sampler.named(sampler_name),)


class BasicScheduler(Node):
    """The sigmas of a scheduler for a model; denoise < 1 keeps the last steps of a longer schedule."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "BasicScheduler", "sampling/custom_sampling/schedulers", _MODULE
    INPUTS = {"model": LINK("MODEL", "Model whose noise schedule to use."),
              "scheduler": COMBO(SCHEDULER_NAMES, "How noise levels are spaced over the steps."),
              "steps": INT(20, 1, 10000, tip="Number of denoising steps."), "denoise": _DENOISE}
    OUTPUTS = ("SIGMAS",)
    FUNCTION = "get_sigmas"

    def get_sigmas(self, model: Any, scheduler: str, steps: int, denoise: float) -> tuple[Any]:
        import torch

        from ..engine.sampling.schedulers import calculate_sigmas, model_sampling_for

        total = steps
        if denoise < 1.0:  # ComfyUI's threshold here is 1.0 itself (KSampler's is 0.9999)
            if denoise <= 0.0:
                return (torch.FloatTensor([]),)
            total = int(steps / denoise)
        sigmas = calculate_sigmas(model_sampling_for(model), scheduler, total).cpu()
        return (sigmas[-(steps + 1):],)


class SDTurboScheduler(Node):
    """SD-Turbo's sigmas: 1 to 10 steps on timesteps 999, 899, ..., 99; denoise skips the first ones."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "SDTurboScheduler", "sampling/custom_sampling/schedulers", _MODULE
    INPUTS = {"model": LINK("MODEL", "Model whose noise schedule to use."),
              "steps": INT(1, 1, 10, tip="Number of denoising steps."),
              "denoise": FLOAT(1.0, 0, 1.0, 0.01, "Fraction of the schedule to run (1 = from pure noise).")}
    OUTPUTS = ("SIGMAS",)
    FUNCTION = "get_sigmas"

    def get_sigmas(self, model: Any, steps: int, denoise: float) -> tuple[Any]:
        import torch

        from ..engine.sampling.schedulers import model_sampling_for

        start = 10 - int(10 * denoise)
        timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start:start + steps]
        sigmas = model_sampling_for(model).sigma(timesteps)
        return (torch.cat([sigmas, sigmas.new_zeros([1])]),)


class RandomNoise(Node):
    """Seeded initial noise (the same draw as KSampler's for that seed)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "RandomNoise", "sampling/custom_sampling/noise", _MODULE
    INPUTS = {"noise_seed": _SEED}
    OUTPUTS = ("NOISE",)
    FUNCTION = "get_noise"

    def get_noise(self, noise_seed: int) -> tuple[Any]:
        from ..engine.sampling.ksampler import RandomNoise as Noise

        return (Noise(noise_seed),)


class DisableNoise(Node):
    """No initial noise: continue from a latent that already holds its noise."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "DisableNoise", "sampling/custom_sampling/noise", _MODULE
    OUTPUTS = ("NOISE",)
    FUNCTION = "get_noise"

    def get_noise(self) -> tuple[Any]:
        from ..engine.sampling.ksampler import DisabledNoise

        return (DisabledNoise(),)


class BasicGuider(Node):
    """Guides with one conditioning and no CFG (distilled models such as FLUX.1)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "BasicGuider", "sampling/custom_sampling/guiders", _MODULE
    INPUTS = {"model": LINK("MODEL", "Diffusion model."), "conditioning": LINK("CONDITIONING", "Prompt.")}
    OUTPUTS = ("GUIDER",)
    FUNCTION = "get_guider"

    def get_guider(self, model: Any, conditioning: list) -> tuple[Any]:
        from ..engine.sampling import guiders

        return (guiders.BasicGuider(model, conditioning),)


class CFGGuider(Node):
    """Classifier-free guidance between a positive and a negative conditioning."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "CFGGuider", "sampling/custom_sampling/guiders", _MODULE
    INPUTS = {"model": LINK("MODEL", "Diffusion model."),
              "positive": LINK("CONDITIONING", "What the image should show."),
              "negative": LINK("CONDITIONING", "What the image should avoid."), "cfg": _CFG}
    OUTPUTS = ("GUIDER",)
    FUNCTION = "get_guider"

    def get_guider(self, model: Any, positive: list, negative: list, cfg: float) -> tuple[Any]:
        from ..engine.sampling import guiders

        return (guiders.CFGGuider(model, positive, negative, cfg),)


class DualCFGGuider(Node):
    """Two guidance scales: cond1 against cond2, and cond2 against the negative ("nested": one inside the other)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "DualCFGGuider", "sampling/custom_sampling/guiders", _MODULE
    INPUTS = {"model": LINK("MODEL", "Diffusion model."),
              "cond1": LINK("CONDITIONING", "Main prompt."),
              "cond2": LINK("CONDITIONING", "Second prompt, guided against the negative."),
              "negative": LINK("CONDITIONING", "What the image should avoid."),
              "cfg_conds": FLOAT(8.0, 0.0, 100.0, 0.1, "Guidance of cond1 over cond2.", round=0.01),
              "cfg_cond2_negative": FLOAT(8.0, 0.0, 100.0, 0.1, "Guidance of cond2 over the negative.", round=0.01),
              "style": COMBO(("regular", "nested"), "regular: two independent terms; nested: CFG of a CFG.")}
    OUTPUTS = ("GUIDER",)
    FUNCTION = "get_guider"

    def get_guider(self, model: Any, cond1: list, cond2: list, negative: list, cfg_conds: float,
                   cfg_cond2_negative: float, style: str) -> tuple[Any]:
        from ..engine.sampling import guiders

        return (guiders.DualCFGGuider(model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative,
                                      nested=style == "nested"),)


_OUTPUT_NAMES = ("output", "denoised_output")


class SamplerCustom(Node):
    """Samples with a SAMPLER and SIGMAS and CFG; also returns the last step's denoised prediction."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "SamplerCustom", "sampling/custom_sampling", _MODULE
    INPUTS = {"model": LINK("MODEL", "Diffusion model."),
              "add_noise": BOOLEAN(True, "Add the seed's noise to the latent first."),
              "noise_seed": _SEED, "cfg": _CFG,
              "positive": LINK("CONDITIONING", "What the image should show."),
              "negative": LINK("CONDITIONING", "What the image should avoid."),
              "sampler": LINK("SAMPLER", "Sampling algorithm."), "sigmas": LINK("SIGMAS", "Noise levels to visit."),
              "latent_image": LINK("LATENT", "Latent to denoise.")}
    OUTPUTS = ("LATENT", "LATENT")
    OUTPUT_NAMES = _OUTPUT_NAMES
    FUNCTION = "sample"

    def sample(self, model: Any, add_noise: bool, noise_seed: int, cfg: float, positive: list, negative: list,
               sampler: Any, sigmas: Any, latent_image: dict[str, Any]) -> tuple[dict, dict]:
        from ..engine.sampling import guiders
        from ..engine.sampling.ksampler import DisabledNoise
        from ..engine.sampling.ksampler import RandomNoise as Noise

        noise = Noise(noise_seed) if add_noise else DisabledNoise()
        guider = guiders.CFGGuider(model, positive, negative, cfg)
        return _run(self, guider, sampler, sigmas, latent_image, noise, seed=noise_seed)


class SamplerCustomAdvanced(Node):
    """Samples with separate NOISE, GUIDER, SAMPLER and SIGMAS; also returns the last denoised prediction."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "SamplerCustomAdvanced", "sampling/custom_sampling", _MODULE
    INPUTS = {"noise": LINK("NOISE", "Initial noise."), "guider": LINK("GUIDER", "Model and conditioning."),
              "sampler": LINK("SAMPLER", "Sampling algorithm."), "sigmas": LINK("SIGMAS", "Noise levels to visit."),
              "latent_image": LINK("LATENT", "Latent to denoise.")}
    OUTPUTS = ("LATENT", "LATENT")
    OUTPUT_NAMES = _OUTPUT_NAMES
    FUNCTION = "sample"

    def sample(self, noise: Any, guider: Any, sampler: Any, sigmas: Any,
               latent_image: dict[str, Any]) -> tuple[dict, dict]:
        return _run(self, guider, sampler, sigmas, latent_image, noise)
