"""The CLIP text transformer in Hugging Face layout (`text_model.encoder.layers.N...`), for SD1, SD2 and SDXL."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class CLIPConfig:
    """Text tower shape; `checkpoint.infer_clip_config` reads it off tensor shapes."""

    vocab_size: int = 49408
    width: int = 768
    layers: int = 12
    heads: int = 12
    max_positions: int = 77
    intermediate: int = 3072
    projection_dim: int | None = None  # text_projection output (clip_g: 1280); None when absent
    activation: str = "quick_gelu"  # OpenAI clip_l; OpenCLIP ViT-H / bigG use "gelu"


def _heads_for(width: int) -> int:
    """OpenAI and OpenCLIP text towers all use 64-dim heads; tiny towers fall back to one head per 16/8 dims."""
    for head_dim in (64, 16, 8, 4, 2, 1):
        if width % head_dim == 0 and width // head_dim >= 1:
            return width // head_dim
    return 1


class CLIPAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x, mask):  # noqa: D102
        b, n, w = x.shape
        q, k, v = (p(x).view(b, n, self.heads, w // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, w))


class CLIPMLP(nn.Module):
    def __init__(self, width: int, intermediate: int, activation: str):
        super().__init__()
        self.fc1 = nn.Linear(width, intermediate)
        self.fc2 = nn.Linear(intermediate, width)
        self.activation = activation

    def forward(self, x):  # noqa: D102
        x = self.fc1(x)
        x = x * torch.sigmoid(1.702 * x) if self.activation == "quick_gelu" else F.gelu(x)
        return self.fc2(x)


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.self_attn = CLIPAttention(cfg.width, cfg.heads)
        self.layer_norm1 = nn.LayerNorm(cfg.width)
        self.mlp = CLIPMLP(cfg.width, cfg.intermediate, cfg.activation)
        self.layer_norm2 = nn.LayerNorm(cfg.width)

    def forward(self, x, mask):  # noqa: D102
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        # why _weight: nn.Embedding's own normal_ init costs ~10 s on the meta device (the loader's path)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width, _weight=torch.empty(cfg.vocab_size, cfg.width))
        self.position_embedding = nn.Embedding(cfg.max_positions, cfg.width,
                                               _weight=torch.empty(cfg.max_positions, cfg.width))
        for emb, std in ((self.token_embedding, 0.02), (self.position_embedding, 0.01)):
            if not emb.weight.is_meta:  # random init only for freshly made (demo) models
                nn.init.normal_(emb.weight, std=std)


class _Encoder(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.layers))


class _TextModel(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.width)


class CLIPTextModel(nn.Module):
    """`text_model.*` plus an optional `text_projection` (clip_g and OpenCLIP ViT-H)."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        self.text_model = _TextModel(cfg)
        if cfg.projection_dim:
            self.text_projection = nn.Linear(cfg.width, cfg.projection_dim, bias=False)

    def forward(self, tokens: torch.Tensor, layer_idx: int = -1, layer_norm_hidden: bool = True,
                eos_positions: torch.Tensor | None = None, embeds: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B,77] -> (hidden state of layer `layer_idx` [B,77,W], pooled [B,W or proj]).

        `embeds` replaces the token lookup (textual inversions); `eos_positions` says where to pool
        (default: the first end-of-text token, as CLIP does).
        """
        tm = self.text_model
        dtype = tm.final_layer_norm.weight.dtype
        x = tm.embeddings.token_embedding(tokens) if embeds is None else embeds.to(dtype)
        n = x.shape[1]
        # read outside the layer's forward: a partial load (offload.stream) keeps this weight on the host
        x = x + tm.embeddings.position_embedding.weight[:n].to(x.device, x.dtype)
        mask = torch.full((n, n), float("-inf"), dtype=x.dtype, device=x.device).triu_(1)
        chosen = None
        index = layer_idx % len(tm.encoder.layers)
        for i, layer in enumerate(tm.encoder.layers):
            x = layer(x, mask)
            if i == index:
                chosen = x
        last = tm.final_layer_norm(x)
        if layer_norm_hidden:
            chosen = tm.final_layer_norm(chosen)
        if eos_positions is None:
            eos_positions = (tokens == 49407).int().argmax(dim=-1) if self.config.vocab_size == 49408 \
                else tokens.argmax(dim=-1)
        pooled = last[torch.arange(last.shape[0], device=last.device), eos_positions]
        if self.config.projection_dim:
            pooled = self.text_projection(pooled)
        return chosen, pooled
