"""Code that runs while a model is on an accelerator makes its tensors where the model's inputs are.

No CUDA here: the meta device stands in for it. Mixing a meta tensor with a CPU tensor (other than a 0-d one) raises
"Tensor on device cpu is not on the expected device meta!", as CUDA raises "Expected all tensors to be on the same
device", so a forward that passes on meta inputs with the weights in the places a partial load leaves them has no
CPU-made tensor meeting the device ones.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402


def _tiny_clip():
    from comfykit.engine.models.clip import CLIPConfig, CLIPTextModel, _heads_for

    cfg = CLIPConfig(width=32, layers=2, heads=_heads_for(32), intermediate=64, projection_dim=16,
                     activation="gelu")
    return CLIPTextModel(cfg).eval()


def test_clip_reads_a_streamed_position_table_from_the_host():
    # under vram="low"/"no" an Embedding that did not fit keeps its weight on the host between its own calls, and
    # CLIP reads the position table directly, outside the layer's forward
    model = _tiny_clip().to("meta")
    emb = model.text_model.embeddings.position_embedding
    emb.weight = nn.Parameter(torch.zeros(emb.weight.shape), requires_grad=False)
    tokens = torch.zeros(2, 77, dtype=torch.long, device="meta")
    with torch.no_grad():
        hidden, pooled = model(tokens, eos_positions=torch.zeros(2, dtype=torch.long, device="meta"))
    assert hidden.device.type == "meta" and tuple(hidden.shape) == (2, 77, 32)
    assert pooled.device.type == "meta" and tuple(pooled.shape) == (2, 16)


def test_t5_sends_its_ids_where_the_model_computes_not_where_the_table_lies():
    from comfykit.engine.models.t5 import build_t5
    from comfykit.engine.models.tiny_text_encoders import t5xxl_state_dict

    class Seen(Exception):
        pass

    def stop(module, args):
        raise Seen(args[0].device.type)

    t5 = build_t5(t5xxl_state_dict(vocab_size=64))
    # a partial load names the device on the root module while a streamed table stays on the host until its call
    t5.__dict__["_comfykit_device"] = torch.device("meta")
    t5.model.shared.register_forward_pre_hook(stop)
    with pytest.raises(Seen) as seen:
        t5(torch.tensor([[1, 2, 3]]))
    assert str(seen.value) == "meta"


def test_bislerp_resizes_a_latent_on_its_own_device():
    import torch.fx.experimental._config as fx_config

    from comfykit.engine.images import common_upscale

    latent = torch.randn(1, 4, 8, 8, device="meta")
    # meta cannot count a boolean mask's hits; bislerp's masked fix-ups need it
    with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        out = common_upscale(latent, 12, 10, "bislerp", "disabled")
    assert out.device.type == "meta" and tuple(out.shape) == (1, 4, 10, 12)
