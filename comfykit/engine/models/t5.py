"""The T5 encoder of FLUX.1 and SD3.5 (T5-XXL): transformers' `T5EncoderModel` with ComfyUI's loading and numerics.

The config is read off tensor shapes (any size loads, so tests use a tiny T5). Layouts: ComfyUI's / Hugging Face's
`t5xxl_*.safetensors` (`encoder.block.N...`, `shared.weight`) and all-in-one checkpoints
(`text_encoders.t5xxl.transformer.` + the same), in fp32/fp16/bf16, fp8 or scaled fp8 (see `fp8.py`).

ComfyUI's semantics, which `encode_tokens` follows:
- weights keep their storage dtype (fp8 stays fp8) and are upcast per layer; activations are float32;
- no attention mask (padding tokens are attended to), the final layer norm is applied;
- prompt weights interpolate from the encoding of the empty prompt (`</s>` then padding), as for CLIP.

Why three tiny subclasses of transformers' modules: its feed-forward casts its hidden state to the dtype of `wo`'s
weight (fp8 or fp16 here) and its layer norm casts activations to a half-precision weight's dtype. ComfyUI keeps
activations in float32, so ours leave them alone.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ModelError
from . import fp8
from .family import module_device
from .t5_tokenizer import T5_EOS, T5_PAD, get_t5_tokenizer
from .text_encoder import parse_weights

T5_PREFIXES = ("text_encoders.t5xxl.transformer.", "t5xxl.transformer.")
_IGNORED = ("decoder.", "lm_head.")  # a whole T5 (encoder-decoder) file: only the encoder is used


def t5_state_dict(sd: dict[str, Any]) -> dict[str, Any]:
    """T5 encoder tensors under HF names (`shared.weight`, `encoder.block.N...`), prefixes and decoder dropped."""
    for prefix in T5_PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    out = {k: v for k, v in sd.items() if not k.startswith(_IGNORED) and not k.endswith("spiece_model")}
    if "shared.weight" not in out and "encoder.embed_tokens.weight" in out:
        out["shared.weight"] = out["encoder.embed_tokens.weight"]
    out.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight
    return out


def _count(sd: dict[str, Any], pattern: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def infer_t5_config(sd: dict[str, Any]) -> Any:
    """transformers `T5Config` from T5 encoder tensor shapes (gated-gelu when `wi_0`/`wi_1` exist, else relu)."""
    from transformers import T5Config

    vocab, d_model = sd["shared.weight"].shape
    attn = "encoder.block.0.layer.0.SelfAttention."
    inner = sd[attn + "q.weight"].shape[0]
    buckets, heads = sd[attn + "relative_attention_bias.weight"].shape
    if "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in sd:
        raise ModelError("this T5 has a relative attention bias in every block (UMT5, used by Wan); "
                         "only T5 v1.0/v1.1 encoders (FLUX.1, SD3.5) are supported")
    ff = "encoder.block.0.layer.1.DenseReluDense."
    gated = ff + "wi_0.weight" in sd
    return T5Config(
        vocab_size=vocab, d_model=d_model, d_kv=inner // heads, num_heads=heads,
        d_ff=sd[ff + ("wi_0.weight" if gated else "wi.weight")].shape[0],
        num_layers=_count(sd, r"encoder\.block\.(\d+)\."), relative_attention_num_buckets=buckets,
        feed_forward_proj="gated-gelu" if gated else "relu", is_encoder_decoder=False, use_cache=False,
        dropout_rate=0.0)


def _patch_modules(model: nn.Module) -> None:
    from transformers.models.t5 import modeling_t5 as m

    class RMSNorm(m.T5LayerNorm):
        def forward(self, x):  # noqa: D102
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
            return self.weight.to(x.dtype) * x

    class GatedFF(m.T5DenseGatedActDense):
        def forward(self, x):  # noqa: D102
            return self.wo(self.act(self.wi_0(x)) * self.wi_1(x))

    class FF(m.T5DenseActDense):
        def forward(self, x):  # noqa: D102
            return self.wo(self.act(self.wi(x)))

    swaps = {m.T5LayerNorm: RMSNorm, m.T5DenseGatedActDense: GatedFF, m.T5DenseActDense: FF}
    for module in model.modules():
        if type(module) in swaps:
            module.__class__ = swaps[type(module)]


class T5Encoder(nn.Module):
    """A loaded T5 encoder: token ids [B, N] -> hidden states [B, N, d_model] in `compute_dtype` (float32)."""

    def __init__(self, model: nn.Module, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model = model
        self.compute_dtype = compute_dtype

    @property
    def config(self) -> Any:
        """The transformers `T5Config` read off the weights."""
        return self.model.config

    @property
    def num_layers(self) -> int:
        """Number of encoder blocks."""
        return len(self.model.encoder.block)

    def forward(self, ids: torch.Tensor, layer_idx: int = -1) -> torch.Tensor:
        """Final-layer-normed output of block `layer_idx` (-1 = last), no attention mask."""
        # module_device, not the table's device: a partial load (offload.stream) keeps the table on the host
        x = self.model.shared(ids.to(module_device(self))).to(self.compute_dtype)
        if fp8.is_fp8(self.model.shared.weight):
            x = torch.nan_to_num(x)  # ComfyUI does this for fp8 T5 tables
        index = layer_idx % self.num_layers
        if index == self.num_layers - 1:
            return self.model(inputs_embeds=x).last_hidden_state
        # hidden_states = (embeddings, block 0 output, ..., normed last): entry i + 1 is block i's raw output
        hidden = self.model(inputs_embeds=x, output_hidden_states=True).hidden_states[index + 1]
        return self.model.encoder.final_layer_norm(hidden)

    def encode_tokens(self, tokens: list[tuple[int, float]], layer_idx: int = -1) -> torch.Tensor:
        """(id, weight) pairs -> [1, N, d_model] float32 on the CPU, prompt weights applied as ComfyUI does."""
        ids = torch.tensor([[t for t, _ in tokens]], dtype=torch.long)
        weights = torch.tensor([w for _, w in tokens], dtype=torch.float32)
        with torch.no_grad():
            if (weights != 1.0).any():
                empty = torch.full_like(ids, T5_PAD)
                empty[0, 0] = T5_EOS
                z, z_empty = self(torch.cat([ids, empty]), layer_idx).float().cpu().chunk(2)
                w = weights[None, :, None]
                return torch.where(w != 1.0, (z - z_empty) * w + z_empty, z)
            return self(ids, layer_idx).float().cpu()

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> T5Encoder:  # type: ignore[override]
        """Move (and store non-fp8 weights in `dtype`) in place; fp8 weights stay fp8 (see `fp8.module_to`)."""
        if isinstance(device, torch.dtype):  # t5.to(torch.float16), as with nn.Module.to
            device, dtype = None, device
        fp8.module_to(self.model, device, dtype)
        return self


def build_t5(sd: dict[str, Any], what: str = "t5xxl", *, compute_dtype: torch.dtype = torch.float32) -> T5Encoder:
    """A T5Encoder from a state dict in any supported layout; weights keep their dtypes (CPU tensors stay CPU)."""
    from transformers import T5EncoderModel

    weights, scales = fp8.split_scales(t5_state_dict(sd))
    try:
        cfg = infer_t5_config(weights)
    except KeyError as e:
        raise ModelError(f"{what}: the T5 weights are incomplete (missing {e.args[0]}); re-download the file") from None
    with torch.device("meta"):
        model = T5EncoderModel(cfg)
    _patch_modules(model)
    weights = {**weights, "encoder.embed_tokens.weight": weights["shared.weight"]}
    try:
        result = model.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError as e:  # a tensor whose shape disagrees with the others
        first = str(e).strip().splitlines()[-1].strip()
        raise ModelError(f"{what}: the T5 weights do not fit together ({first}); the file may be damaged") from None
    if result.missing_keys or result.unexpected_keys:
        missing, unexpected = result.missing_keys, result.unexpected_keys
        raise ModelError(f"{what}: the T5 weights do not fit the architecture read off their shapes (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}); the file may be damaged")
    model.encoder.embed_tokens = model.shared
    fp8.cast_layers(model, scales, compute_dtype=compute_dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    return T5Encoder(model.eval(), compute_dtype)


def load_t5(sd: dict[str, Any], what: str = "t5xxl", *, device: Any = None, dtype: torch.dtype | None = None,
            compute_dtype: torch.dtype = torch.float32) -> T5Encoder:
    """`build_t5` then move to `device`, non-fp8 weights stored in `dtype` (None: as in the file)."""
    return build_t5(sd, what, compute_dtype=compute_dtype).to(device, dtype)


def tokenize_t5(text: str, min_length: int, embeddings_dir: str | Path | None = None) -> list[tuple[int, float]]:
    """Prompt -> (id, weight) pairs as ComfyUI's T5 tokenizer: segments, then `</s>`, padded with 0 to `min_length`.

    Weighted segments `(word:1.2)` are tokenized separately (no chunking: T5 takes the whole prompt). With an
    embeddings folder, `embedding:name` words are dropped like ComfyUI drops them (T5 textual inversions are not
    supported); without one they are plain text.
    """
    tok = get_t5_tokenizer()
    tokens: list[tuple[int, float]] = []
    for segment, weight in parse_weights(text):
        pieces = re.split(r" embedding:|\nembedding:", segment)
        pieces = [pieces[0]] + ["embedding:" + p for p in pieces[1:]]
        for piece in pieces:
            if embeddings_dir is not None and piece.startswith("embedding:"):
                name, _, piece = piece[len("embedding:"):].partition(" ")
                warnings.warn(f"embedding {name!r}: textual inversions are not applied to T5; it is left out",
                              stacklevel=3)
            if piece:
                tokens += [(t, weight) for t in tok.encode(piece)]
    tokens.append((T5_EOS, 1.0))
    return tokens + [(T5_PAD, 1.0)] * max(0, min_length - len(tokens))
