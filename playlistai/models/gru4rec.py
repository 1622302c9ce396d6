"""GRU4Rec: a recurrent session model (Hidasi et al., 2016) with the same interface as SASRec.

embedding -> GRU -> context fusion -> scores against the tied item table.

The GRU reads sequences right-padded: histories arrive left-padded, and a GRU that read the
padding first would carry a state that depends on how much padding there was. Rolling each row
so its tracks start at column 0 (and rolling the outputs back) makes padding invisible without
pack_padded_sequence's sorting and copying.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from playlistai.models.base import SequenceRecommender
from playlistai.models.config import ModelConfig
from playlistai.models.context import ContextFusion


def _roll_rows(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """out[b, i] = x[b, (i + shift[b]) % L] for x [B, L, ...]."""
    B, L = x.shape[:2]
    idx = (torch.arange(L, device=x.device)[None, :] + shift[:, None]) % L
    if x.dim() > 2:
        idx = idx.view(B, L, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 1, idx)


class GRU4Rec(SequenceRecommender):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.item_emb = nn.Embedding(config.vocab_size, config.d_model, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, mean=0.0, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.drop = nn.Dropout(config.dropout)
        self.gru = nn.GRU(
            config.d_model,
            config.d_model,
            num_layers=config.n_layers,
            batch_first=True,
            dropout=config.dropout if config.n_layers > 1 else 0.0,
        )
        self.context = ContextFusion(config.d_model, config.use_context)

    def forward(self, input_ids: torch.Tensor, hours: torch.Tensor, dows: torch.Tensor) -> torch.Tensor:
        L = input_ids.shape[1]
        pad = (input_ids == 0).sum(dim=1)                 # left padding per row
        x = self.drop(self.item_emb(_roll_rows(input_ids, pad)))
        out, _ = self.gru(x)                             # real tracks first: padding comes after
        out = _roll_rows(out, (L - pad) % L)             # back to left-padded alignment
        return self.query_vectors(self.context(self.drop(out), hours, dows))
