"""latent2rgb and TAESD previews."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from comfykit.engine.sampling import latent_formats as lf  # noqa: E402
from comfykit.engine.sampling.preview import Previewer, find_taesd_decoder  # noqa: E402
from comfykit.engine.sampling.taesd import Decoder, load_taesd_decoder  # noqa: E402
from comfykit.errors import ModelError  # noqa: E402


def test_latent_format_scaling():
    x = torch.randn(1, 16, 4, 4)
    assert torch.allclose(lf.Flux.process_in(x), (x - 0.1159) * 0.3611)
    assert torch.allclose(lf.SD3.process_out(lf.SD3.process_in(x)), x, atol=1e-6)
    assert (lf.SD15.scale_factor, lf.SDXL.scale_factor) == (0.18215, 0.13025)
    assert [f.latent_channels for f in (lf.SD15, lf.SDXL, lf.SD3, lf.Flux)] == [4, 4, 16, 16]
    assert all(len(f.rgb_factors) == f.latent_channels for f in (lf.SD15, lf.SDXL, lf.SD3, lf.Flux))


def test_latent2rgb_of_a_known_latent():
    x0 = torch.zeros(2, 4, 8, 8)
    x0[0, 0] = 1.0  # SD15 channel 0 maps to (0.3512, 0.2297, 0.3227)
    x0[1] = 5.0  # only the first batch item is shown
    image = Previewer(lf.SD15, preview_size=8).to_image(x0)
    assert image.size == (8, 8) and image.mode == "RGB"
    assert image.getpixel((3, 3)) == (172, 156, 168)  # ((v + 1) / 2 * 255) truncated
    sdxl = Previewer(lf.SDXL, preview_size=8).to_image(torch.zeros(1, 4, 8, 8))
    assert sdxl.getpixel((0, 0)) == (141, 125, 127)  # the SDXL bias alone


def test_preview_is_scaled_to_fit_preview_size():
    assert Previewer(lf.SD15).to_image(torch.zeros(1, 4, 8, 4)).size == (256, 512)
    assert Previewer(lf.SD15, preview_size=64).to_image(torch.zeros(1, 4, 256, 256)).size == (64, 64)


def test_taesd_on_random_weights(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in Decoder(4).state_dict().items()},
              str(tmp_path / "taesd_decoder.safetensors"))
    path = find_taesd_decoder(tmp_path, lf.SD15)
    assert path is not None and path.name == "taesd_decoder.safetensors"
    assert find_taesd_decoder(tmp_path, lf.SDXL) is None
    previewer = Previewer(lf.SD15, "taesd", path, preview_size=512)
    assert previewer.method == "taesd"
    assert previewer.decode(torch.randn(2, 4, 4, 3)).shape == (32, 24, 3)
    assert previewer.to_image(torch.randn(1, 4, 4, 3)).size == (384, 512)


def test_taesd_falls_back_to_latent2rgb_without_a_file(tmp_path):
    previewer = Previewer(lf.SD3, "taesd", find_taesd_decoder(tmp_path, lf.SD3))
    assert previewer.method == "latent2rgb"
    assert previewer.to_image(torch.zeros(1, 16, 4, 4)).size == (512, 512)


def test_bad_taesd_file_is_a_model_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(tmp_path / "taesd_decoder.safetensors"))
    with pytest.raises(ModelError, match="not a TAESD decoder"):
        load_taesd_decoder(tmp_path / "taesd_decoder.safetensors")
    (tmp_path / "broken.pth").write_bytes(b"nope")
    with pytest.raises(ModelError, match="cannot read"):
        load_taesd_decoder(tmp_path / "broken.pth")


def test_unknown_preview_method():
    with pytest.raises(ValueError, match="latent2rgb"):
        Previewer(lf.SD15, "fancy")
