"""`TextEncoder`: ComfyUI's prompt weighting, 75-token chunking and textual inversions over one or two CLIPs."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ...errors import ModelError
from ..interrupt import check as check_interrupt
from .clip import CLIPTextModel
from .diffusion import module_device, module_dtype
from .tokenizer import BOS, EOS, get_tokenizer

CHUNK = 75  # tokens per chunk, without the start and end tokens
CHUNK_BATCH = 16  # chunks encoded in one call; longer prompts run in groups, checking for interrupts between
MAX_WORD = 8  # a word of this many tokens or more may be split across chunks


@dataclass(frozen=True)
class ClipSlot:
    """One CLIP inside a TextEncoder and how ComfyUI reads it."""

    name: str  # "clip_l" | "clip_h" | "clip_g"
    layer_idx: int = -1
    layer_norm_hidden: bool = True
    pad_token: int = EOS


def parse_weights(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """`"a (red:1.3) ((cat))"` -> [("a ", 1.0), ("red", 1.3), ("cat", 1.21)]; `\\(` and `\\)` are literal."""
    out: list[tuple[str, float]] = []
    buf, i = "", 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "()":
            buf += text[i:i + 2]
            i += 2
        elif ch == "(":
            depth, j = 1, i + 1
            while j < len(text) and depth:
                if text[j] == "\\":
                    j += 1
                elif text[j] == "(":
                    depth += 1
                elif text[j] == ")":
                    depth -= 1
                j += 1
            if depth:  # unbalanced: ComfyUI keeps the rest as plain text
                buf += text[i:]
                break
            if buf:
                out.append((buf, weight))
                buf = ""
            inner = text[i + 1:j - 1]
            head, sep, tail = inner.rpartition(":")
            try:
                inner_weight = float(tail) if sep else None
            except ValueError:
                inner_weight = None
            if inner_weight is not None:
                out += parse_weights(head, inner_weight)
            else:
                out += parse_weights(inner, weight * 1.1)
            i = j
        else:
            buf += ch
            i += 1
    if buf:
        out.append((buf, weight))
    return [(t.replace("\\(", "(").replace("\\)", ")"), w) for t, w in out]


def load_embedding(path: Path) -> dict[str, torch.Tensor]:
    """A textual inversion file -> {"": vectors} or {"clip_l": ..., "clip_g": ...} (SDXL files)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            data: Any = load_file(str(path))
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"embedding {path.name}: cannot read it ({e}); re-download it") from None
    if isinstance(data, dict) and "string_to_param" in data:  # A1111 .pt
        data = dict(data["string_to_param"])
    if isinstance(data, torch.Tensor):
        data = {"": data}
    if not isinstance(data, dict) or not data:
        raise ModelError(f"embedding {path.name}: no vectors found in it")
    if "clip_l" in data or "clip_g" in data:
        return {k: v.float().reshape(-1, v.shape[-1]) for k, v in data.items() if k in ("clip_l", "clip_g")}
    vectors = data.get("emb_params", next(iter(data.values())))
    return {"": vectors.float().reshape(-1, vectors.shape[-1])}


class TextEncoder:
    """Prompt -> (cond [1, 77*k, dim] float32, pooled or None), as ComfyUI's CLIPTextEncode computes it."""

    def __init__(self, clips: dict[str, CLIPTextModel], slots: list[ClipSlot], pooled_from: str,
                 embeddings_dir: str | Path | None = None, name: str = ""):
        self.clips = clips
        self.slots = slots
        self.pooled_from = pooled_from
        self.embeddings_dir = Path(embeddings_dir) if embeddings_dir else None
        self.name = name
        self.patches: dict[str, Any] = {}
        self.tokenizer = get_tokenizer()

    @property
    def device(self) -> torch.device:
        """Where the weights are now."""
        return module_device(next(iter(self.clips.values())))

    @property
    def dtype(self) -> torch.dtype:
        """The weight dtype (outputs are always float32)."""
        return module_dtype(next(iter(self.clips.values())))

    def clone(self) -> TextEncoder:
        """A new wrapper sharing the weights (set_last_layer / LoRA on it leave the original alone)."""
        other = copy.copy(self)
        other.clips = dict(self.clips)
        other.slots = list(self.slots)
        other.patches = dict(self.patches)
        return other

    def set_last_layer(self, n: int) -> TextEncoder:
        """CLIPSetLastLayer: read hidden layer `n` (-1 last, -2 penultimate); mutates this clone, returns it."""
        if n >= 0:
            raise ValueError(f"stop_at_clip_layer must be negative (-1 = last layer), got {n}")
        self.slots = [replace(s, layer_idx=max(n, -len(self.clips[s.name].text_model.encoder.layers)))
                      for s in self.slots]
        return self

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> TextEncoder:
        """Move the weights in place and return self."""
        for clip in self.clips.values():
            clip.to(device=device, dtype=dtype)
        return self

    # -- tokenizing ---------------------------------------------------------------------------------------------
    def _embedding(self, name: str) -> dict[str, torch.Tensor] | None:
        if self.embeddings_dir is None:
            return None
        for candidate in (name, name + ".safetensors", name + ".pt", name + ".bin"):
            path = self.embeddings_dir / candidate
            if path.is_file():
                return load_embedding(path)
        return None

    def tokenize(self, text: str) -> list[list[tuple[Any, float]]]:
        """Chunks of 77 (token, weight); a token is an int id or ("emb", vectors dict, row)."""
        groups: list[list[tuple[Any, float]]] = []
        for segment, weight in parse_weights(text):
            for word in segment.split(" "):
                if not word:
                    continue
                if word.startswith("embedding:"):
                    name = word[len("embedding:"):].strip(",.;")
                    vectors = self._embedding(name)
                    if vectors is not None:
                        rows = next(iter(vectors.values())).shape[0]
                        groups.append([(("emb", vectors, r), weight) for r in range(rows)])
                        continue
                    warnings.warn(f"embedding {name!r} not found in {self.embeddings_dir}; using the words instead",
                                  stacklevel=3)
                groups.append([(t, weight) for t in self.tokenizer.encode(word)])
        chunks: list[list[tuple[Any, float]]] = []
        batch: list[tuple[Any, float]] = []
        for group in groups:
            large = len(group) >= MAX_WORD
            while group:
                if len(batch) + len(group) > CHUNK:
                    if large:  # long words are split; short ones move whole to the next chunk
                        room = CHUNK - len(batch)
                        batch, group = batch + group[:room], group[room:]
                    chunks.append(batch)
                    batch = []
                else:
                    batch, group = batch + group, []
        chunks.append(batch)
        return [[(BOS, 1.0), *c, (EOS, 1.0)] for c in chunks]

    # -- encoding -----------------------------------------------------------------------------------------------
    def _run(self, slot: ClipSlot, chunks: list[list[tuple[Any, float]]]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(chunks) > CHUNK_BATCH:  # a very long prompt: in groups, interruptible between them
            parts = []
            for start in range(0, len(chunks), CHUNK_BATCH):
                check_interrupt()
                parts.append(self._run(slot, chunks[start:start + CHUNK_BATCH]))
            return torch.cat([h for h, _ in parts]), torch.cat([p for _, p in parts])
        clip = self.clips[slot.name]
        device, dtype = self.device, self.dtype
        n = clip.config.max_positions
        ids = torch.full((len(chunks), n), slot.pad_token, dtype=torch.long)
        eos = torch.zeros(len(chunks), dtype=torch.long)
        extra: list[tuple[int, int, torch.Tensor]] = []
        for b, chunk in enumerate(chunks):
            for i, (tok, _) in enumerate(chunk):
                if isinstance(tok, tuple):
                    vectors = tok[1].get(slot.name.replace("clip_h", "clip_l"), tok[1].get(""))
                    if vectors is None or vectors.shape[-1] != clip.config.width:
                        raise ModelError(f"textual inversion has {None if vectors is None else vectors.shape[-1]}"
                                         f"-dim vectors but {slot.name} is {clip.config.width}-dim: wrong model family")
                    extra.append((b, i, vectors[tok[2]]))
                    ids[b, i] = 0
                else:
                    ids[b, i] = tok
            eos[b] = len(chunk) - 1
        ids = ids.to(device)
        with torch.no_grad():
            embeds = None
            if extra:
                embeds = clip.text_model.embeddings.token_embedding(ids).clone()
                for b, i, vec in extra:
                    embeds[b, i] = vec.to(device, dtype)
            hidden, pooled = clip(ids, slot.layer_idx, slot.layer_norm_hidden, eos.to(device), embeds)
        return hidden.float().cpu(), pooled.float().cpu()

    def encode_slot(self, slot: ClipSlot, chunks: list[list[tuple[Any, float]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """One CLIP's (cond [1, 77*k, width], pooled [1, width] of the first chunk), weights applied."""
        weights = torch.tensor([[w for _, w in c] + [1.0] * (77 - len(c)) for c in chunks])
        hidden, pool = self._run(slot, chunks)
        if (weights != 1.0).any():
            z_empty, _ = self._run(slot, [[(BOS, 1.0), (EOS, 1.0)]])
            w = weights[:, : hidden.shape[1], None]
            hidden = torch.where(w != 1.0, (hidden - z_empty) * w + z_empty, hidden)
        return hidden.reshape(1, -1, hidden.shape[-1]), pool[:1]

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt -> (cond [1, 77*k, dim], pooled [1, dim] or None) with weights `(word:1.2)` applied."""
        if not isinstance(text, str):
            raise TypeError(f"TextEncoder.encode expects a string prompt, got {type(text).__name__}")
        chunks = self.tokenize(text)
        conds, pooled = [], None
        for slot in self.slots:
            cond, pool = self.encode_slot(slot, chunks)
            conds.append(cond)
            if slot.name == self.pooled_from:
                pooled = pool
        return torch.cat(conds, dim=-1), pooled

    def __repr__(self) -> str:
        names = ", ".join(f"{s.name}(w={self.clips[s.name].config.width}, layer={s.layer_idx})" for s in self.slots)
        return f"TextEncoder({names}, {self.dtype}, {self.device}{', lora' if self.patches else ''})"
