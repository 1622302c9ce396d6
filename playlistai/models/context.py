"""Context of the moment a track will play (hour of day, day of week), shared by every model.

The API receives the context of the *next* play, so the context is mixed into the sequence state
right before scoring: the state says "what fits after this history", the context says "at 7 am on
a Monday". Mixing is FiLM-style (Perez et al., 2018): each hour and each weekday has a learned
per-dimension scale and shift of the state,

    out = LayerNorm(h * (1 + scale[hour] + scale[dow]) + shift[hour] + shift[dow])

The shift alone lets a context prefer its own tracks whatever the history; the scale lets it
re-weight what the history says. It is a table lookup per event (an MLP over [h; context] cost
more than a transformer layer at d_model=256), and the result stays one vector, so scoring remains
a pure inner product with the item table, which a FAISS inner-product index reproduces exactly.
"""

from __future__ import annotations

import torch
import torch.nn as nn

N_HOURS = 24
N_DOWS = 7


class ContextFusion(nn.Module):
    def __init__(self, d_model: int, use_context: bool = True):
        super().__init__()
        self.use_context = use_context
        if use_context:
            # zero init: training starts from the context-free model and learns what context adds
            self.hour_scale = nn.Embedding(N_HOURS, d_model)
            self.hour_shift = nn.Embedding(N_HOURS, d_model)
            self.dow_scale = nn.Embedding(N_DOWS, d_model)
            self.dow_shift = nn.Embedding(N_DOWS, d_model)
            for emb in (self.hour_scale, self.hour_shift, self.dow_scale, self.dow_shift):
                nn.init.zeros_(emb.weight)
        # normalized output either way, so use_context=true/false differ only by the context
        self.norm = nn.LayerNorm(d_model)

    def forward(self, h: torch.Tensor, hours: torch.Tensor, dows: torch.Tensor) -> torch.Tensor:
        """h [..., D], hours/dows [...] (same leading shape) -> [..., D]."""
        if self.use_context:
            scale = 1.0 + self.hour_scale(hours) + self.dow_scale(dows)
            h = h * scale + self.hour_shift(hours) + self.dow_shift(dows)
        return self.norm(h)
