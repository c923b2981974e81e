"""Guiders (ComfyUI's GUIDER type): how a run's conditionings become one denoised prediction per step.

A guider holds a model and named conditionings (``positive``, ``negative``, ``middle``) and is plain data, so a
cached GUIDER output can serve many runs. ``guider.denoiser(model_sampling, run_options)`` builds the per-run
k-diffusion model ``x, sigma -> x0`` the samplers call. All guiders share :meth:`Denoiser.predictions`: each
conditioning entry is resolved against the latent (area, mask, strength, timestep range, the model's inputs) and
entries whose inputs have equal shapes run in one batched model call, as ComfyUI's ``calc_cond_batch`` does.

Conditioning: ``[[cond [1|B, T, dim], {"pooled_output", "area", "strength", "mask", ...}], ...]``. Each entry
becomes the model's ModelInputs through ``model.model_inputs()``; the family decides what it reads from the options.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from ..models.family import ModelInputs


def check_conds(name: str, conds: Any, required: bool = False) -> list:
    """``conds`` as a list of [tensor, dict] pairs, or a ValueError naming the input."""
    if not isinstance(conds, (list, tuple)):
        raise ValueError(f"{name} conditioning must be a list of [tensor, dict] pairs, got {type(conds).__name__}")
    if required and not conds:
        raise ValueError(f"{name} conditioning is empty; connect a CLIPTextEncode output")
    return list(conds)


class _Cond:
    """One conditioning entry resolved against the latent: the model inputs, crop, weight map and sigma range."""

    def __init__(self, model: Any, entry: Any, x: torch.Tensor, model_sampling: Any, prompt_type: str,
                 run_options: dict[str, Any], start_control: Any = None):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], dict)):
            raise ValueError("each conditioning entry must be [tensor [B, tokens, dim], dict]; got "
                             f"{type(entry).__name__}")
        cond, opts = entry
        if "prompt_type" not in opts:
            opts = {**opts, "prompt_type": prompt_type}  # ComfyUI tells the model which side a cond is on
        batch, _, height, width = x.shape
        device = x.device
        # the run's latent_image / denoise_mask reach the model as ComfyUI's extra_conds kwargs: the entry's own
        # options win (an inpainting model's concat falls back to them without InpaintModelConditioning)
        self.inputs = model.model_inputs(cond, {**run_options, **opts}, x)
        if opts.get("control") is not None and start_control is not None:  # ControlNetApply's CONTROL_NET chain
            self.inputs.control = start_control(opts["control"])
        # ConditioningSetTimestepRange: the entry only takes part while sigma is within its percent range
        self.sigma_range = None
        if "start_percent" in opts or "end_percent" in opts:
            self.sigma_range = (model_sampling.percent_to_sigma(float(opts.get("start_percent", 0.0))),
                                model_sampling.percent_to_sigma(float(opts.get("end_percent", 1.0))))
        mask = opts.get("mask")
        if mask is not None:  # resized to the latent once, as ComfyUI's resolve_areas_and_cond_masks
            mask = torch.as_tensor(mask, dtype=torch.float32)
            mask = mask[None] if mask.ndim == 2 else mask
            if mask.shape[-2:] != (height, width):
                mask = torch.nn.functional.interpolate(mask[:, None], size=(height, width), mode="bilinear")[:, 0]
        area = opts.get("area")
        if area is not None and area[0] == "percentage":
            area = (max(1, round(area[1] * height)), max(1, round(area[2] * width)),
                    round(area[3] * height), round(area[4] * width))
        if mask is not None and opts.get("set_area_to_bounds", False):  # ConditioningSetMask "mask bounds"
            area = _mask_bounds(mask)
        if area is not None:
            ah, aw, ay, ax = (int(v) for v in area)
            ay, ax = min(ay, height - 1), min(ax, width - 1)
            area = (min(ah, height - ay), min(aw, width - ax), ay, ax)
        self.area = area
        ah, aw, ay, ax = area if area is not None else (height, width, 0, 0)
        if area is not None and self.inputs.concat is not None:  # extra channels follow the crop
            self.inputs.concat = self.inputs.concat[:, :, ay:ay + ah, ax:ax + aw]
        strength = float(opts.get("strength", 1.0))
        if mask is not None:
            mask = mask[:batch]
            if batch % mask.shape[0]:
                raise ValueError(f"a conditioning mask (ConditioningSetMask) holds {mask.shape[0]} masks but the "
                                 f"latent batch has {batch} items; give one mask, or one per latent item")
            mask = mask[:, ay:ay + ah, ax:ax + aw] * float(opts.get("mask_strength", 1.0))
            mult = mask[:, None].to(device).repeat(batch // mask.shape[0], x.shape[1], 1, 1)
        else:
            mult = torch.ones((batch, x.shape[1], ah, aw), device=device)
            if area is not None:
                _feather(mult, area, height, width)
        self.mult = mult * strength

    def active(self, sigma: torch.Tensor) -> bool:
        """False while sigma is outside the entry's timestep range."""
        if self.sigma_range is None:
            return True
        start, end = self.sigma_range
        s = float(sigma.max())
        return not (s > start or s < end)


def control_to_uncond(conds: dict[str, list]) -> dict[str, list]:
    """ControlNetApply (the old node) also controls the other conds: when none of another cond's whole-image
    entries has a ControlNet, the positive's ControlNets go onto its entries in turn (ComfyUI's rule)."""
    positive = conds.get("positive") or []
    cnets = [o["control"] for _, o in positive
             if o.get("control_apply_to_uncond") and o.get("area") is None and o.get("control") is not None]
    if not cnets:
        return conds
    out = dict(conds)
    for name, entries in conds.items():
        if name == "positive" or not entries:
            continue
        whole = [(i, o) for i, (_, o) in enumerate(entries) if o.get("area") is None]
        free = [i for i, o in whole if o.get("control") is None]
        if len(free) < len(whole) or not free:
            continue
        entries = list(entries)
        for k, cnet in enumerate(cnets):
            i = free[k % len(free)]
            entries[i] = [entries[i][0], {**entries[i][1], "control": cnet}]
        out[name] = entries
    return out


def _mask_bounds(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """The area (h, w, y, x) around every nonzero pixel of any mask item, at least 8x8 (ComfyUI's rule)."""
    ys, xs = torch.nonzero(mask.abs().amax(0), as_tuple=True)
    if ys.numel() == 0:  # an empty mask contributes nothing; the smallest area keeps its model call cheap
        return 8, 8, 0, 0
    y0, x0 = int(ys.min()), int(xs.min())
    return max(8, int(ys.max()) - y0 + 1), max(8, int(xs.max()) - x0 + 1), y0, x0


def _feather(mult: torch.Tensor, area: tuple[int, int, int, int], height: int, width: int) -> None:
    """Ramp the weight linearly at area edges that lie inside the image, over min(8, side // 4) latent pixels."""
    ah, aw, ay, ax = area
    rr = min(8, ah // 4)
    for t in range(rr):
        if ay != 0:
            mult[:, :, t] *= (t + 1) / rr
        if ay + ah < height:
            mult[:, :, ah - 1 - t] *= (t + 1) / rr
    rr = min(8, aw // 4)
    for t in range(rr):
        if ax != 0:
            mult[:, :, :, t] *= (t + 1) / rr
        if ax + aw < width:
            mult[:, :, :, aw - 1 - t] *= (t + 1) / rr


def cfg_function(cond: torch.Tensor, uncond: torch.Tensor, scale: float, x: torch.Tensor, sigma: torch.Tensor,
                 options: dict[str, Any]) -> torch.Tensor:
    """Classifier-free guidance on x0 predictions, then the model_options' ``post_cfg_function`` if any."""
    denoised = uncond + (cond - uncond) * scale
    post = options.get("post_cfg_function")
    if post is not None:
        denoised = post({"denoised": denoised, "cond_denoised": cond, "uncond_denoised": uncond,
                         "sigma": sigma, "input": x, "cond_scale": scale})
    return denoised


class Denoiser:
    """The per-run k-diffusion model of a guider: ``__call__(x, sigma, **extra_args)`` -> denoised x0."""

    def __init__(self, model: Any, model_sampling: Any, conds: dict[str, list],
                 run_options: dict[str, Any] | None = None):
        self.model, self.model_sampling = model, model_sampling
        self.conds = control_to_uncond(conds)
        self.run_options = dict(run_options or {})
        self._resolved: dict[str, list[_Cond]] = {}
        self._repeat_context = getattr(getattr(model, "family", None), "repeat_context", True)
        self._control_runs: dict[int, tuple[Any, Any]] = {}

    def _start_control(self, control: Any) -> Any:
        # one run per CONTROL_NET object: positive and negative sharing one (ControlNetApplyAdvanced) batch together
        if id(control) not in self._control_runs:
            self._control_runs[id(control)] = (control, control.start(self.model, self.model_sampling))
        return self._control_runs[id(control)][1]

    def _resolve(self, name: str, x: torch.Tensor) -> list[_Cond]:
        if name not in self._resolved:
            self._resolved[name] = [_Cond(self.model, e, x, self.model_sampling, name, self.run_options,
                                          self._start_control) for e in self.conds.get(name) or []]
        return self._resolved[name]

    def _run(self, items: list[tuple[int, _Cond]], x: torch.Tensor, sigma: torch.Tensor):
        """Evaluate all (slot, cond) items sharing one crop and input shapes in a single batched model call."""
        cond0 = items[0][1]
        ah, aw, ay, ax = cond0.area if cond0.area is not None else (x.shape[2], x.shape[3], 0, 0)
        crop = x[:, :, ay:ay + ah, ax:ax + aw]
        n, batch = len(items), x.shape[0]
        inputs = ModelInputs.cat([c.inputs for _, c in items], batch, self._repeat_context)
        sig = sigma.repeat(n)
        if inputs.control is not None:  # the family calls control(x, t, inputs); the chain's ranges need sigma
            inputs.control = functools.partial(inputs.control, sigma=sig, calls=n)
        ms = self.model_sampling
        x_in = ms.calculate_input(sig, crop.repeat(n, 1, 1, 1))
        out = self.model.apply(x_in, ms.timestep(sig).float(), inputs)
        den = ms.calculate_denoised(sig, out.to(x.device).float(), crop.repeat(n, 1, 1, 1))
        return den.chunk(n)

    def predictions(self, x: torch.Tensor, sigma: torch.Tensor, names: list[str | None]) -> list[torch.Tensor]:
        """The weighted-average denoised prediction of each named conditioning (None or empty: zeros)."""
        groups: dict[Any, list[tuple[int, _Cond]]] = {}
        for slot, name in enumerate(names):
            if name is None:
                continue
            for cond in self._resolve(name, x):
                if cond.active(sigma):
                    key = (cond.area, cond.inputs.batch_key(self._repeat_context))
                    groups.setdefault(key, []).append((slot, cond))
        outs = [torch.zeros_like(x) for _ in names]
        counts = [torch.full_like(x, 1e-37) for _ in names]  # ComfyUI's floor: uncovered pixels become 0
        for items in groups.values():
            for (slot, cond), den in zip(items, self._run(items, x, sigma)):
                ah, aw, ay, ax = cond.area if cond.area is not None else (x.shape[2], x.shape[3], 0, 0)
                mult = cond.mult.to(x.dtype)
                outs[slot][:, :, ay:ay + ah, ax:ax + aw] += den * mult
                counts[slot][:, :, ay:ay + ah, ax:ax + aw] += mult
        return [o / c for o, c in zip(outs, counts)]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args: Any) -> torch.Tensor:
        raise NotImplementedError


class CFGDenoiser(Denoiser):
    """CFG over area/mask-weighted conds: uncond + (cond - uncond) * cfg; cfg 1 skips the uncond pass."""

    def __init__(self, model: Any, model_sampling: Any, positive: list, negative: list | None, cfg: float,
                 run_options: dict[str, Any] | None = None):
        super().__init__(model, model_sampling, {"positive": positive, "negative": negative}, run_options)
        self.cfg = float(cfg)
        self.positive, self.negative = positive, negative

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args: Any) -> torch.Tensor:
        options = extra_args.get("model_options") or {}
        skip_uncond = math.isclose(self.cfg, 1.0) and not options.get("disable_cfg1_optimization", False)
        cond, uncond = self.predictions(x, sigma, ["positive", None if skip_uncond else "negative"])
        return cfg_function(cond, uncond, self.cfg, x, sigma, options)


class DualCFGDenoiser(Denoiser):
    """Two guidance scales: cond1 against cond2 (``cfg_conds``) and cond2 against the negative."""

    def __init__(self, model: Any, model_sampling: Any, conds: dict[str, list], cfg1: float, cfg2: float,
                 nested: bool, run_options: dict[str, Any] | None = None):
        super().__init__(model, model_sampling, conds, run_options)
        self.cfg1, self.cfg2, self.nested = float(cfg1), float(cfg2), nested

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args: Any) -> torch.Tensor:
        options = extra_args.get("model_options") or {}
        if self.nested:  # cfg2 applied to the cfg1-guided text prediction
            neg, mid, pos = self.predictions(x, sigma, ["negative", "middle", "positive"])
            text = cfg_function(pos, mid, self.cfg1, x, sigma, options)
            return neg + self.cfg2 * (text - neg)
        names: list[str | None] = ["negative", "middle", "positive"]
        if not options.get("disable_cfg1_optimization", False) and math.isclose(self.cfg2, 1.0):
            names[0] = None  # as ComfyUI: a skipped prediction counts as zeros
            if math.isclose(self.cfg1, 1.0):
                names[1] = None
        neg, mid, pos = self.predictions(x, sigma, names)
        return cfg_function(mid, neg, self.cfg2, x, sigma, options) + (pos - mid) * self.cfg1


class Guider:
    """A GUIDER: a model with named conditionings; ``denoiser()`` builds the x0 predictor of one run."""

    def __init__(self, model: Any, conds: dict[str, list]):
        self.model = model
        self.conds = conds

    def denoiser(self, model_sampling: Any, run_options: dict[str, Any] | None = None) -> Denoiser:
        """The per-run k-diffusion model (``run_options``: the run's ``latent_image`` and ``denoise_mask``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v or [])}" for k, v in self.conds.items())
        return f"{type(self).__name__}({sizes})"


class CFGGuider(Guider):
    """ComfyUI's CFGGuider: positive and negative conditioning at one CFG scale."""

    def __init__(self, model: Any, positive: list, negative: list | None, cfg: float):
        positive = check_conds("positive", positive, required=True)
        negative = check_conds("negative", negative) if negative is not None else None
        super().__init__(model, {"positive": positive, "negative": negative})
        self.cfg = float(cfg)

    def denoiser(self, model_sampling: Any, run_options: dict[str, Any] | None = None) -> Denoiser:
        return CFGDenoiser(self.model, model_sampling, self.conds["positive"], self.conds["negative"], self.cfg,
                           run_options)


class BasicGuider(CFGGuider):
    """ComfyUI's BasicGuider: the positive conditioning alone (cfg 1; what FLUX.1's distilled models use)."""

    def __init__(self, model: Any, conditioning: list):
        super().__init__(model, conditioning, None, 1.0)


class DualCFGGuider(Guider):
    """ComfyUI's DualCFGGuider: cond1 vs cond2 at ``cfg_conds``, cond2 vs negative at ``cfg_cond2_negative``."""

    def __init__(self, model: Any, cond1: list, cond2: list, negative: list, cfg_conds: float,
                 cfg_cond2_negative: float, nested: bool = False):
        cond1 = check_conds("cond1", cond1, required=True)
        # ComfyUI marks cond2 as the negative side of the first guidance
        cond2 = [[c, {**o, "prompt_type": "negative"}] for c, o in check_conds("cond2", cond2)]
        super().__init__(model, {"positive": cond1, "middle": cond2, "negative": check_conds("negative", negative)})
        self.cfg_conds, self.cfg_cond2_negative, self.nested = float(cfg_conds), float(cfg_cond2_negative), nested

    def denoiser(self, model_sampling: Any, run_options: dict[str, Any] | None = None) -> Denoiser:
        return DualCFGDenoiser(self.model, model_sampling, self.conds, self.cfg_conds, self.cfg_cond2_negative,
                               self.nested, run_options)
