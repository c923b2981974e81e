"""Interrupts reach inside long nodes: text-encoder chunk groups and batched resizes check between pieces."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from comfykit.engine.executor import Interrupted  # noqa: E402
from comfykit.engine.images import common_upscale  # noqa: E402
from comfykit.engine.interrupt import check, checking  # noqa: E402


def test_check_is_a_no_op_outside_a_run():
    check()  # notebook code calling a model directly is never interrupted by a stale flag


def test_a_long_prompt_is_encoded_in_interruptible_groups(sd1):
    _, clip, _ = sd1
    long_prompt = " ".join(["a photo of a red fox in the snow"] * 200)  # about 27 chunks of 75 tokens
    calls = []
    with checking(lambda: calls.append(1)):
        cond, _ = clip.encode(long_prompt)
    assert len(calls) >= 2 and cond.shape[1] >= 77 * 20
    assert torch.equal(cond, clip.encode(long_prompt)[0])  # grouping does not change the result

    def stop():
        raise Interrupted()

    with checking(stop), pytest.raises(Interrupted):
        clip.encode(long_prompt)


def test_a_batch_resize_checks_between_items():
    x = torch.rand(3, 3, 8, 8)
    seen = []
    with checking(lambda: seen.append(1)):
        out = common_upscale(x, 16, 16, "bilinear", "disabled")
    assert len(seen) == 3  # one check per item
    torch.testing.assert_close(out, torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear"))


def test_vae_decodes_check_between_batches_and_tiles(sd1):
    _, _, vae = sd1
    latent = torch.randn(3, 4, 16, 16)
    calls = []
    with checking(lambda: calls.append(1)):
        vae.decode(latent, batch=1)
    assert len(calls) == 3
    calls.clear()
    with checking(lambda: calls.append(1)):
        vae.decode_tiled(latent[:1], tile_x=8, tile_y=8, overlap=2)
    assert len(calls) > 3  # one check per tile, in each of the tile layouts
