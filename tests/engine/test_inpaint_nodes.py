"""Inpainting and outpainting: VAEEncodeForInpaint and ImagePadForOutpaint as ComfyUI computes them, the sampler
keeping the unmasked region, and an inpainting checkpoint against diffusers' StableDiffusionInpaintPipeline."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from comfykit import demo  # noqa: E402
from comfykit.engine.models import load_checkpoint  # noqa: E402
from comfykit.engine.sampling.ksampler import _prepare_mask, common_ksampler  # noqa: E402
from comfykit.nodes.conditioning_ops import InpaintModelConditioning  # noqa: E402
from comfykit.nodes.inpaint import ImagePadForOutpaint, VAEEncodeForInpaint  # noqa: E402


class _Engine:
    @staticmethod
    def call_with(fn, *models):
        return fn()


class _Recorder:
    """A VAE that records what it is asked to encode and returns a fixed latent."""

    downscale = 8

    def __init__(self):
        self.seen = None

    def encode(self, pixels):
        self.seen = pixels
        return torch.zeros(pixels.shape[0], 4, pixels.shape[1] // 8, pixels.shape[2] // 8)


class _CellVAE:
    """A VAE whose decoder is local (each 8x8 pixel cell from its own latent cell: the cell's mean colour), so
    a pixel can be compared with the round trip. SD VAEs' GroupNorm and attention see the whole latent: there
    the unmasked pixels move with the masked ones by an amount that depends on the weights."""

    downscale = 8

    def encode(self, pixels):
        cells = torch.nn.functional.avg_pool2d(pixels.movedim(-1, 1), 8)
        return torch.cat([cells * 4 - 2, cells.mean(1, keepdim=True)], dim=1)

    def decode(self, latent):
        rgb = (latent[:, :3] + 2) / 4
        return torch.nn.functional.interpolate(rgb, scale_factor=8, mode="nearest").movedim(1, -1).clamp(0, 1)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inpaint")
    return {arch: load_checkpoint(demo.make_checkpoint(folder / f"{arch}.safetensors", arch=arch, seed=2))
            for arch in ("sd1", "sd1-inpaint")}


def test_vae_encode_for_inpaint_greys_the_masked_pixels_and_grows_the_mask():
    pixels = torch.rand(1, 36, 43, 4)  # not multiples of 8, and an alpha channel the VAE must not see
    mask = torch.zeros(1, 18, 22)
    mask[:, 8, 10] = 1.0  # one (upsampled: about 2x2) pixel
    vae = _Recorder()
    latent = VAEEncodeForInpaint(_Engine()).encode(pixels, vae, mask, 6)[0]
    seen = vae.seen
    assert seen.shape == (1, 32, 40, 3)  # centre-cropped to whole latent cells: offsets 2 and 1
    full = torch.nn.functional.interpolate(mask[:, None], size=(36, 43), mode="bilinear")[:, :, 2:34, 1:41]
    hard = full.round()[0, 0]
    assert hard.sum() > 0
    assert torch.equal(seen[0][hard == 1], torch.full_like(seen[0][hard == 1], 0.5))
    torch.testing.assert_close(seen[0][hard == 0], pixels[0, 2:34, 1:41, :3][hard == 0])
    noise_mask = latent["noise_mask"]
    assert noise_mask.shape == (1, 1, 32, 40) and set(noise_mask.unique().tolist()) == {0.0, 1.0}
    # grown by a 6x6 box (padding 3): each repainted pixel spreads 2 pixels up/left and 3 down/right
    ys, xs = torch.nonzero(hard, as_tuple=True)
    gy, gx = torch.nonzero(noise_mask[0, 0], as_tuple=True)
    assert (gy.min(), gy.max(), gx.min(), gx.max()) == (ys.min() - 2, ys.max() + 3, xs.min() - 2, xs.max() + 3)
    same = VAEEncodeForInpaint(_Engine()).encode(pixels, _Recorder(), mask, 0)[0]["noise_mask"]
    assert torch.equal(same[0, 0], hard)


def test_image_pad_for_outpaint_feathers_into_the_image():
    image = torch.rand(2, 40, 50, 3)
    out, mask = ImagePadForOutpaint(_Engine()).expand_image(image, 8, 16, 0, 24, 10)
    assert out.shape == (2, 80, 58, 3) and mask.shape == (1, 80, 58)
    torch.testing.assert_close(out[:, 16:56, 8:58], image)
    assert (out[:, :16] == 0.5).all() and (out[:, 56:] == 0.5).all() and (out[:, :, :8] == 0.5).all()
    assert (mask[0, :16] == 1).all() and (mask[0, 56:] == 1).all() and (mask[0, :, :8] == 1).all()
    inner = mask[0, 16:56, 8:58]
    # ComfyUI's feather: ((f - d) / f)^2 with d the distance to the nearest padded side (0 on the top and left
    # edge rows, 1 on the bottom one); the unpadded right side does not fade
    assert inner[0, 25] == 1.0 and inner[5, 25] == pytest.approx(0.25) and inner[20, 25] == 0.0
    assert inner[39, 25] == pytest.approx(0.81) and inner[20, 0] == 1.0 and inner[20, 49] == 0.0
    assert inner[3, 2] == pytest.approx(0.64)  # nearest side wins: 2 from the left
    _, sharp = ImagePadForOutpaint(_Engine()).expand_image(image, 8, 16, 0, 24, 25)  # 2 * 25 >= 40: no feather
    assert (sharp[0, 16:56, 8:58] == 0).all()


@pytest.mark.parametrize("arch", ["sd1", "sd1-inpaint"])
def test_the_sampler_keeps_the_unmasked_region(checkpoints, arch):
    """VAEEncodeForInpaint -> KSampler: outside the noise mask the latent stays the encoded one exactly, so the
    unmasked pixels stay the VAE round trip of the input (a local VAE shows it pixel for pixel)."""
    model, clip, vae = checkpoints[arch]
    assert model.config.in_channels == (9 if arch.endswith("inpaint") else 4)
    gen = torch.Generator().manual_seed(0)
    pixels = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 8, generator=gen), size=(48, 64),
                                             mode="bilinear").movedim(1, -1)
    mask = torch.zeros(1, 48, 64)
    mask[:, 8:24, 32:56] = 1.0
    cond = [[clip.encode("a red fox")[0], {}]]
    for encoder in (vae, _CellVAE()):
        latent = VAEEncodeForInpaint(_Engine()).encode(pixels, encoder, mask, 6)[0]
        out = common_ksampler(model, 1, 3, 4.0, "euler", "normal", cond, cond, latent)["samples"]
        keep = _prepare_mask(latent["noise_mask"], out.shape, out.device)[0, 0] == 0
        assert 0.3 < keep.float().mean() < 0.9
        torch.testing.assert_close(out[..., keep], latent["samples"][..., keep], atol=1e-6, rtol=0)  # scale round trip
        assert (out - latent["samples"])[..., ~keep].abs().mean() > 0.05
    decoded, round_trip = _CellVAE().decode(out), _CellVAE().decode(latent["samples"])
    cells = keep.repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert (decoded - round_trip)[0][cells].abs().max() <= 1 / 255
    assert (decoded - round_trip)[0][~cells].abs().max() > 0.05


@pytest.mark.slow  # a diffusers pipeline with CFG: 5 s on 2 idle cores, much more on a busy machine
def test_inpaint_checkpoint_equals_stable_diffusion_inpaint_pipeline(tmp_path, checkpoints):
    """InpaintModelConditioning + KSampler on a 9-channel checkpoint vs diffusers' StableDiffusionInpaintPipeline
    on the same tiny weights, noise and sigmas (the pipeline starts from pure noise: our latent is empty)."""
    diffusers = pytest.importorskip("diffusers")
    from comfykit.engine.sampling.ksampler import prepare_noise, select_sigmas

    model, clip, vae = checkpoints["sd1-inpaint"]
    folder = demo.make_diffusers_folder(tmp_path / "diffusers", arch="sd1-inpaint", seed=2)
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    dvae = diffusers.AutoencoderKL.from_pretrained(folder / "vae").eval()
    gen = torch.Generator().manual_seed(1)
    pixels = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=gen), size=(64, 64),
                                             mode="bilinear").movedim(1, -1)
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 24:56] = 1.0  # on whole latent cells: bilinear (ours) and nearest (theirs) agree
    cond, uncond = clip.encode("a red fox")[0], clip.encode("")[0]
    pos, neg, latent = InpaintModelConditioning(_Engine()).encode([[cond, {}]], [[uncond, {}]], vae, pixels, mask,
                                                                  False)
    empty = {"samples": torch.zeros_like(latent["samples"])}
    seed, steps, cfg = 3, 4, 5.0
    ours = model.latent_format.process_in(common_ksampler(model, seed, steps, cfg, "euler", "simple", pos, neg,
                                                          empty)["samples"])

    sigmas = select_sigmas(model.model_sampling, "euler", "simple", steps)
    s0 = float(sigmas[0])
    # ComfyUI scales the first noise by sqrt(1 + sigma^2) when sampling starts at sigma_max, diffusers by sigma
    noise = prepare_noise(empty["samples"], seed) * math.sqrt(1 + s0 ** 2) / s0
    masked = (pixels.movedim(-1, 1) * 2 - 1) * (mask[:, None] < 0.5)
    with torch.no_grad():  # the pipeline would sample the posterior: hand it the mean, as ComfyUI's VAE encodes
        masked_latents = dvae.encode(masked).latent_dist.mode() * dvae.config.scaling_factor
    pipe = diffusers.StableDiffusionInpaintPipeline(
        vae=dvae, text_encoder=None, tokenizer=None, unet=unet, safety_checker=None, feature_extractor=None,
        scheduler=diffusers.EulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, image=pixels.movedim(-1, 1),
                  mask_image=mask[:, None], masked_image_latents=masked_latents, latents=noise, height=64, width=64,
                  sigmas=sigmas.tolist(), guidance_scale=cfg, strength=1.0, output_type="latent").images
    assert torch.isfinite(ours).all() and ours.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=2e-3)


def test_sd2_inpainting_checkpoints_are_eps(tmp_path):
    """512-inpainting-ema is an SD2 UNet with 9 input channels: eps, whatever its norm biases look like (ComfyUI
    tests those for v-prediction only on 4-channel SD2 UNets)."""
    from safetensors.torch import load_file, save_file

    path = demo.make_checkpoint(tmp_path / "512-inpainting-ema.safetensors", arch="sd2-inpaint")
    sd = load_file(str(path))
    for key in sd:
        if key.endswith("transformer_blocks.0.norm1.bias") and ".output_blocks." in key:
            sd[key] = torch.randn(sd[key].shape) * 0.5  # what makes a 4-channel SD2 UNet v-prediction
    save_file(sd, str(path))
    model = load_checkpoint(path)[0]
    assert (model.arch, model.config.in_channels, model.model_sampling.prediction) == ("sd2", 9, "eps")
