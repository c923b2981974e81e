"""Every family's text encoder, diffusion model and VAE run on a device that is not the host, whole or streamed.

No CUDA here: the meta device stands in for it (see test_device_placement.py). A tensor the code makes on the CPU
and hands to a device op raises there, as on a GPU. Each model goes through ``offload.stream``, the partial loader,
with no budget (every streamable layer's weights stay on the host and are brought in per call, the ``vram="no"``
path) and with an unlimited one (everything placed, the plain path). A run passes when it reaches the host copy
of its result (`.cpu()`, which meta cannot do) or returns a device tensor.
"""

from __future__ import annotations

import traceback

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

ARCHS = ["sd1", "sdxl", "flux", "sd3"]


@pytest.fixture
def stream_to_meta(monkeypatch):
    """offload.stream onto the meta device: swap Parameter objects (``p.data = meta`` cannot change device)."""
    from comfykit.engine.models import offload

    host: dict[tuple[int, str], nn.Parameter] = {}

    def place(module, device):
        for name, p in list(module._parameters.items()):
            if p is not None:
                host.setdefault((id(module), name), p)
                module._parameters[name] = nn.Parameter(p.data.to(device), requires_grad=False)

    def bring(self, module, _args):
        place(module, self.device)

    def drop(self, module, _args, _out):
        for name in list(module._parameters):
            if (id(module), name) in host:
                module._parameters[name] = host[(id(module), name)]

    monkeypatch.setattr(offload.Streamer, "_bring", bring)
    monkeypatch.setattr(offload.Streamer, "_drop", drop)
    monkeypatch.setattr(offload, "module_to_own", place)
    return offload.stream


def _on_device(fn):
    """fn()'s result, or None when it stopped only at the host copy of its result (`.cpu()` of a meta tensor)."""
    try:
        return fn()
    except NotImplementedError as e:
        ours = [f for f in traceback.extract_tb(e.__traceback__) if "comfykit" in f.filename]
        assert "meta" in str(e) and ours and ".cpu()" in (ours[-1].line or ""), (
            f"stopped before reaching the host copy: {ours[-1] if ours else e}")
        return None


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from comfykit import demo

    folder = tmp_path_factory.mktemp("families")
    paths = {}
    for arch in ARCHS:
        paths[arch] = folder / f"{arch}.safetensors"
        if arch in ("flux", "sd3"):
            demo.make_dit_checkpoint(paths[arch], arch)
        else:
            demo.make_checkpoint(paths[arch], arch=arch, seed=1)
    return paths


@pytest.mark.parametrize("budget", [0, 1 << 40], ids=["streamed", "whole"])
@pytest.mark.parametrize("arch", ARCHS)
def test_family_runs_on_a_device_that_is_not_the_host(arch, budget, checkpoints, stream_to_meta):
    from comfykit.engine.models.checkpoint import load_checkpoint
    from comfykit.engine.models.offload import model_modules

    model, clip, vae = load_checkpoint(checkpoints[arch], device="cpu", dtype=torch.float32)
    cond, pooled = clip.encode("a cat")  # host tensors, as a conditioning node leaves them
    for m in (clip, model, vae):
        stream_to_meta(model_modules(m), "meta", budget)
    _on_device(lambda: clip.encode("a (red:1.2) cat"))
    x = torch.randn(1, model.latent_format.latent_channels, 8, 8)
    t = torch.tensor([0.5 if arch in ("flux", "sd3") else 500.0])
    with torch.no_grad():
        out = model.apply(x, t, model.model_inputs(cond, {"pooled_output": pooled}, x))
    assert out.device.type == "meta" and tuple(out.shape) == tuple(x.shape)
    _on_device(lambda: vae.decode(torch.randn(1, vae.latent_channels, 8, 8)))
    _on_device(lambda: vae.encode(torch.rand(1, 64, 64, 3)))


#: ControlNets of each family, as ``demo.make_controlnet`` writes them: (family, arch, layout)
CONTROLNETS = {"sd1": ("sd1", "sd1", "ldm"), "sdxl": ("sdxl", "sdxl", "ldm"),
               "flux-instantx": ("flux", "flux-instantx", "diffusers"), "flux-xlabs": ("flux", "flux-xlabs", "xlabs"),
               "sd3.5-sai": ("sd3", "sd3.5-sai", "ldm")}


@pytest.mark.parametrize("budget", [0, 1 << 40], ids=["streamed", "whole"])
@pytest.mark.parametrize("kind", list(CONTROLNETS))
def test_a_controlnet_runs_on_a_device_that_is_not_the_host(kind, budget, checkpoints, stream_to_meta, tmp_path):
    import functools

    from comfykit import demo
    from comfykit.engine.models.checkpoint import load_checkpoint
    from comfykit.engine.models.controlnet import load_controlnet
    from comfykit.engine.models.offload import model_modules

    family, arch, layout = CONTROLNETS[kind]
    model, clip, vae = load_checkpoint(checkpoints[family], device="cpu", dtype=torch.float32)
    cond, pooled = clip.encode("a cat")
    path = demo.make_controlnet(tmp_path / "c.safetensors", arch=arch, layout=layout)
    # the hint image stays on the host, and so does the VAE that encodes it for the FLUX.1/SD3.5 ControlNets
    cnet = load_controlnet(path).with_hint(torch.rand(1, 3, 64, 64), vae=vae)
    for m in (model, cnet.model):
        stream_to_meta(model_modules(m), "meta", budget)
    x = torch.randn(1, model.latent_format.latent_channels, 8, 8)
    sigma = torch.tensor([1.0])
    inputs = model.model_inputs(cond, {"pooled_output": pooled, "width": 64, "height": 64}, x)
    inputs.control = functools.partial(cnet.start(model, model.model_sampling), sigma=sigma, calls=1)
    ran, net = [], cnet.model.network
    residuals = net.residuals
    net.residuals = lambda x, *args, **kwargs: ran.append(x.device.type) or residuals(x, *args, **kwargs)
    with torch.no_grad():
        out = model.apply(x, model.model_sampling.timestep(sigma).float(), inputs)
    assert ran == ["meta"] and out.device.type == "meta" and tuple(out.shape) == tuple(x.shape)
