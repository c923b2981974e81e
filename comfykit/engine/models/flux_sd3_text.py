"""The text encoders of FLUX.1 (CLIP-L + T5-XXL) and SD3.5 (CLIP-L + CLIP-G + optional T5-XXL), as ComfyUI runs them.

Both are `TextEncoder`s (CLIPTextEncode, CLIPSetLastLayer, LoRA on the CLIP towers and the model manager work on
them unchanged) with a T5 added and ComfyUI's way of combining the towers:

- FLUX.1: cond = T5 hidden states [1, max(256, tokens), 4096]; pooled = CLIP-L's unprojected pooled output [1, 768].
- SD3.5: CLIP-L and CLIP-G penultimate hidden states (no final layer norm) side by side, zero-padded to 4096
  features, then the T5 tokens (at least 77) after them along the sequence; pooled = cat(CLIP-L unprojected,
  CLIP-G projected) [1, 2048]. A missing tower is what ComfyUI does without it: no T5 -> CLIP tokens only; no
  CLIP-L -> its 768 features and pooled values are zeros; no CLIPs -> T5 tokens and zero pooled.

`encode_towers` takes one text per tower, as CLIPTextEncodeFlux / CLIPTextEncodeSD3 pass them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import ModelError
from .clip import CLIPTextModel
from .diffusion import module_device, module_dtype
from .t5 import T5Encoder, tokenize_t5
from .text_encoder import ClipSlot, TextEncoder
from .tokenizer import BOS, EOS

_EMPTY_CHUNK = [(BOS, 1.0), (EOS, 1.0)]


def _t5_layer(n: int, t5: T5Encoder) -> int:
    # ComfyUI reads the last layer when |n| is past the depth (CLIPSetLastLayer reaches T5 too)
    return n if abs(n) <= t5.num_layers else -1


class _WithT5(TextEncoder):
    """A TextEncoder plus an optional T5; device/dtype/to/set_last_layer cover both."""

    t5: T5Encoder | None
    t5_layer: int

    def _modules(self) -> list[Any]:
        return [*self.clips.values(), *([self.t5] if self.t5 is not None else [])]

    @property
    def device(self) -> torch.device:
        """Where the weights are now."""
        return module_device(self._modules()[0])

    @property
    def dtype(self) -> torch.dtype:
        """The storage dtype of the CLIP weights (T5: of its non-fp8 weights); outputs are float32."""
        return module_dtype(self._modules()[0])

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> _WithT5:
        """Move the weights in place (fp8 T5 weights stay fp8) and return self."""
        super().to(device, dtype)
        if self.t5 is not None:
            self.t5.to(device, dtype)
        return self

    def set_last_layer(self, n: int) -> _WithT5:
        """CLIPSetLastLayer: every tower reads hidden layer `n`, T5 included (as ComfyUI); returns self."""
        super().set_last_layer(n)
        if self.t5 is not None:
            self.t5_layer = _t5_layer(n, self.t5)
        return self

    def _t5_tokens(self, text: str, min_length: int) -> list[tuple[int, float]]:
        return tokenize_t5(text, min_length, self.embeddings_dir)

    def _describe(self) -> str:
        parts = [f"{n}(w={c.config.width})" for n, c in self.clips.items()]
        if self.t5 is not None:
            parts.append(f"t5xxl(d={self.t5.config.d_model}, layers={self.t5.num_layers})")
        return ", ".join(parts)

    def __repr__(self) -> str:
        lora = ", lora" if self.patches else ""
        return f"{type(self).__name__}({self._describe()}, {self.dtype}, {self.device}{lora})"


class FluxTextEncoder(_WithT5):
    """FLUX.1's text encoder: `encode(text)` -> (T5 cond [1, N>=256, d_t5], CLIP-L pooled [1, 768])."""

    T5_MIN_LENGTH = 256

    t5: T5Encoder

    def __init__(self, clip_l: CLIPTextModel, t5: T5Encoder, embeddings_dir: str | Path | None = None,
                 name: str = ""):
        super().__init__({"clip_l": clip_l}, [ClipSlot("clip_l")], "clip_l", embeddings_dir, name)
        self.t5 = t5
        self.t5_layer = -1

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt -> (cond, pooled) with the same text for both towers (CLIPTextEncode)."""
        if not isinstance(text, str):
            raise TypeError(f"FluxTextEncoder.encode expects a string prompt, got {type(text).__name__}")
        return self.encode_towers(text, text)

    def encode_towers(self, clip_l: str, t5xxl: str) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIPTextEncodeFlux: pooled from the `clip_l` text, cond from the `t5xxl` text."""
        # the CLIP-L hidden states are not used by FLUX.1; its pooled output is the first chunk's (weights do not
        # change it), so one pass without the weighting's empty-prompt pass gives ComfyUI's value
        _, pooled = self._run(self.slots[0], self.tokenize(clip_l))
        cond = self.t5.encode_tokens(self._t5_tokens(t5xxl, self.T5_MIN_LENGTH), self.t5_layer)
        return cond, pooled[:1]


class SD3TextEncoder(_WithT5):
    """SD3.5's text encoder: any of CLIP-L, CLIP-G and T5-XXL; `encode(text)` -> (cond [1, N, 4096], pooled [1, 2048]).

    `context_dim` (default: the T5's width, else 4096) is the feature width the CLIP states are padded to; the widths
    of an absent CLIP default to the real ones (768, 1280) and only size the zeros that stand in for it.
    """

    T5_MIN_LENGTH = 77

    def __init__(self, clip_l: CLIPTextModel | None = None, clip_g: CLIPTextModel | None = None,
                 t5: T5Encoder | None = None, embeddings_dir: str | Path | None = None, name: str = "", *,
                 context_dim: int | None = None, l_width: int = 768, g_width: int = 1280):
        clips = {k: v for k, v in (("clip_l", clip_l), ("clip_g", clip_g)) if v is not None}
        if not clips and t5 is None:
            raise ModelError("an SD3 text encoder needs at least one of clip_l, clip_g and t5xxl")
        slots = [s for s in (ClipSlot("clip_l", -2, False, EOS), ClipSlot("clip_g", -2, False, 0)) if s.name in clips]
        super().__init__(clips, slots, "clip_g" if clip_g is not None else "clip_l", embeddings_dir, name)
        self.t5 = t5
        self.t5_layer = -1
        self.l_width = clip_l.config.width if clip_l is not None else l_width
        self.g_width = clip_g.config.width if clip_g is not None else g_width
        self.g_pooled_width = (clip_g.config.projection_dim or clip_g.config.width) if clip_g is not None else g_width
        self.context_dim = context_dim or (t5.config.d_model if t5 is not None else 4096)

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt -> (cond, pooled) with the same text for every tower (CLIPTextEncode)."""
        if not isinstance(text, str):
            raise TypeError(f"SD3TextEncoder.encode expects a string prompt, got {type(text).__name__}")
        return self.encode_towers(text, text, text, empty_padding="empty_prompt")

    def encode_towers(self, clip_l: str, clip_g: str, t5xxl: str, empty_padding: str = "none",
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIPTextEncodeSD3: one text per tower; `empty_padding="none"` leaves an empty text's tower out."""
        if empty_padding not in ("none", "empty_prompt"):
            raise ValueError(f"empty_padding must be 'none' or 'empty_prompt', got {empty_padding!r}")
        no_padding = empty_padding == "none"
        tok_g = [] if clip_g == "" and no_padding else self.tokenize(clip_g)
        tok_l = [] if clip_l == "" and no_padding else self.tokenize(clip_l)
        # the two CLIPs' states are joined feature-wise: the shorter one gets empty-prompt chunks
        tok_l += [list(_EMPTY_CHUNK)] * (len(tok_g) - len(tok_l))
        tok_g += [list(_EMPTY_CHUNK)] * (len(tok_l) - len(tok_g))
        t5_tokens = None if t5xxl == "" and no_padding else self._t5_tokens(t5xxl, self.T5_MIN_LENGTH)
        return self._combine(tok_l, tok_g, t5_tokens)

    def _combine(self, tok_l: list, tok_g: list, t5_tokens: list | None) -> tuple[torch.Tensor, torch.Tensor]:
        out, lg, pooled = None, None, None
        if tok_l or tok_g:
            if "clip_l" in self.clips:
                lg, l_pooled = self.encode_slot(self.slots[0], tok_l)
            else:
                l_pooled = torch.zeros(1, self.l_width)
            if "clip_g" in self.clips:
                g_out, g_pooled = self.encode_slot(self.slots[-1], tok_g)
                if lg is not None:
                    n = min(lg.shape[1], g_out.shape[1])  # ComfyUI cuts both to the shorter one
                    lg = torch.cat([lg[:, :n], g_out[:, :n]], dim=-1)
                else:
                    lg = F.pad(g_out, (self.l_width, 0))
            else:
                g_pooled = torch.zeros(1, self.g_pooled_width)
            if lg is not None:
                if lg.shape[-1] > self.context_dim:
                    raise ModelError(f"{self.name or 'SD3 text encoder'}: the CLIP states are {lg.shape[-1]} wide, "
                                     f"more than the {self.context_dim} features of the T5 / model context")
                out = lg = F.pad(lg, (0, self.context_dim - lg.shape[-1]))
            pooled = torch.cat([l_pooled, g_pooled], dim=-1)
        if self.t5 is not None:
            # an empty T5 text under empty_padding="none" still encodes ComfyUI's empty token list: `</s>` alone
            t5_out = self.t5.encode_tokens(t5_tokens or [(1, 1.0)], self.t5_layer)
            out = t5_out if lg is None else torch.cat([lg, t5_out], dim=-2)
        if out is None:
            out = torch.zeros(1, 77, self.context_dim)
        if pooled is None:
            pooled = torch.zeros(1, self.l_width + self.g_pooled_width)
        return out, pooled
