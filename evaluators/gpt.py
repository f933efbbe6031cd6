"""A small decoder-only transformer (GPT) for the language-model track, in plain torch.

After nanoGPT's model.py (Karpathy): pre-LayerNorm blocks, causal self-attention
through ``F.scaled_dot_product_attention(is_causal=True)``, learned position
embeddings, the output layer tied to the token embedding, GPT-2's initialisation
(normal std 0.02; residual projections 0.02 / sqrt(2 * n_layer)). No dropout: a
proxy run is far too short to overfit.

The candidate activation is the MLP's, passed as a class (``act_layer``, as in
timm) and instantiated once per block, so each block has its own learnable
coefficients. ``mlp="glu"`` makes the candidate the gate of a gated MLP,
``fc2(act(fc1_g(x)) * fc1_x(x))``, with the hidden width scaled by 2/3 so the
parameter count matches the plain MLP (Shazeer 2020; LLaMA).

Presets are registered with the image models (``evaluators.list_models()``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluators.models import check_mlp, glu_hidden, register_model


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, n_head: int):
        super().__init__()
        if dim % n_head:
            raise ValueError(f"n_embd={dim} is not a multiple of n_head={n_head}")
        self.n_head = n_head
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # position i sees 0..i only
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    """Plain: fc2(act(fc1_x(x))). Gated: fc2(act(fc1_g(x)) * fc1_x(x)), width glu_hidden(hidden).

    The names follow timm's Mlp/SwiGLU closely enough to read either; fc1_x is the
    plain MLP's fc1, so the activation's input has the same scale in both forms.
    """

    def __init__(self, dim: int, hidden: int, act_layer: type, mlp: str = "plain"):
        super().__init__()
        gated = check_mlp(mlp) == "glu"
        hidden = glu_hidden(hidden) if gated else hidden
        self.fc1_g = nn.Linear(dim, hidden) if gated else None
        self.fc1_x = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc1_g is None:
            return self.fc2(self.act(self.fc1_x(x)))
        return self.fc2(self.act(self.fc1_g(x)) * self.fc1_x(x))


class Block(nn.Module):
    def __init__(self, dim: int, n_head: int, mlp_ratio: float, act_layer: type, mlp: str):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_head)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), act_layer, mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token ids (batch, time) -> next-token logits (batch, time, vocab_size)."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int,
                 act_layer: type = nn.GELU, mlp: str = "plain", mlp_ratio: float = 4.0):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, mlp_ratio, act_layer, mlp) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017), as GPT-2 and nanoGPT
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.ndim == 2:  # linear weights and both embeddings
                # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer), since n_layer
                # blocks each add two of them to the residual stream
                residual = name.endswith("attn.proj.weight") or name.endswith("mlp.fc2.weight")
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer) if residual else 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(f"sequence of {t} tokens is longer than block_size={self.block_size}")
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@register_model("gpt-nano", kind="text", block_size=64)
def gpt_nano(act_layer, vocab_size, block_size, mlp="plain"):
    """CPU-sized character GPT: 4 layers, dim 64, 4 heads, MLP ratio 4, 64 characters of
    context; 0.21M parameters with Shakespeare's 84 characters. A CPU trial buys a few
    hundred steps, and at that budget steps matter more than width or context: dim 128
    cost 2-3x per token, and a 128-character context learned less per token (seed 0,
    1M tokens, lr 2e-3: 3.40 bpc at 128 vs 3.27 at 64 characters)."""
    return GPT(vocab_size, block_size, n_layer=4, n_head=4, n_embd=64, act_layer=act_layer, mlp=mlp)


@register_model("gpt-small", kind="text", block_size=256)
def gpt_small(act_layer, vocab_size, block_size, mlp="plain"):
    """For GPUs: nanoGPT's character-level Shakespeare model (config/train_shakespeare_char.py):
    6 layers, dim 384, 6 heads, 256 characters of context; about 10.7M parameters. Not yet
    trained here (no GPU so far); nanoGPT trains it at lr 1e-3, batch 64, not TEXT_DEFAULTS'
    nano-sized 5e-3 and 32."""
    return GPT(vocab_size, block_size, n_layer=6, n_head=6, n_embd=384, act_layer=act_layer, mlp=mlp)


__all__ = ["GPT", "Block", "MLP", "CausalSelfAttention"]
