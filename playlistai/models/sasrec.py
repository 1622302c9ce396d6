"""SASRec: causal self-attention over the listening history (Kang & McAuley, 2018), nanoGPT-style.

item + position embeddings -> n pre-LayerNorm transformer blocks (causal, padding-masked) ->
final LayerNorm -> context fusion -> scores against the same (tied) item table.

Positions count from the first real track of the window, not from the left edge: histories are
left-padded, and counting from the edge would make the output depend on how much padding a
caller added. Counting from the first track also keeps training windows and serving histories in
the same frame (the first track the model sees is always position 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from playlistai.models.base import SequenceRecommender
from playlistai.models.config import ModelConfig
from playlistai.models.context import ContextFusion


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """`attn_mask` [B, 1, L, L] (True: may attend), or None for plain causal attention."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)
        # [B, L, D] -> [B, heads, L, D/heads]
        q, k, v = (t.view(B, L, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(B, L, D)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    # SASRec's point-wise feed-forward is d_model wide (GPT's is 4x): on CPU the blocks then cost
    # about half as much, and the paper found no gain from a wider one
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return x


class SASRec(SequenceRecommender):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.item_emb = nn.Embedding(config.vocab_size, config.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layers)])
        self.ln_f = nn.LayerNorm(config.d_model)
        self.context = ContextFusion(config.d_model, config.use_context)
        self.apply(self._init_weights)
        # GPT-2's scaled init of residual projections keeps the residual stream's variance flat
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def forward(self, input_ids: torch.Tensor, hours: torch.Tensor, dows: torch.Tensor) -> torch.Tensor:
        B, L = input_ids.shape
        if L > self.config.max_seq_len:
            raise ValueError(f"sequence length {L} exceeds max_seq_len {self.config.max_seq_len}")
        real = input_ids != 0
        pos = (real.long().cumsum(dim=1) - 1).clamp(min=0)
        x = self.drop(self.item_emb(input_ids) + self.pos_emb(pos))
        attn_mask = None
        if not bool(real.all()):
            # query i may attend key j when j <= i and j is a real track; a padded query attends to
            # itself only, so its softmax never sees an empty row (its output is never scored)
            causal = torch.ones(L, L, dtype=torch.bool, device=input_ids.device).tril()
            eye = torch.eye(L, dtype=torch.bool, device=input_ids.device)
            attn_mask = (causal & real[:, None, :]) | eye
            attn_mask = attn_mask[:, None, :, :]                 # broadcast over heads
        # else no padding (a served history, its left padding trimmed): plain causal attention,
        # SDPA's own causal kernel, and no mask built per request
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.query_vectors(self.context(self.ln_f(x), hours, dows))
