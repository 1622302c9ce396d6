"""What every sequence model offers, so training, evaluation, packaging and serving treat
SASRec and GRU4Rec alike.

Conventions: index 0 is PAD; histories are left-padded (the most recent track is the last
column); `hours`/`dows` at step t are the context of the event *predicted* at step t.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from playlistai.models.config import ModelConfig


def trim_left_padding(*tensors: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop leading columns that are padding in every row.

    Models are padding-invariant, so this changes no output; it only saves the compute a batch of
    short histories would spend on a max_seq_len-wide window.
    """
    nonpad = (ids != 0).any(dim=0)
    first = int(nonpad.float().argmax()) if bool(nonpad.any()) else ids.shape[1] - 1
    return tuple(t[:, first:] for t in tensors)


class SequenceRecommender(nn.Module):
    config: ModelConfig
    item_emb: nn.Embedding

    def forward(self, input_ids: torch.Tensor, hours: torch.Tensor, dows: torch.Tensor) -> torch.Tensor:
        """input_ids, hours, dows [B, L] -> hidden [B, L, D]; scores are hidden @ item_embeddings().T."""
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:
        """The tied item table [V, D]; row 0 is PAD."""
        return self.item_emb.weight

    def user_vectors(self, histories: torch.Tensor, hours: torch.Tensor, dows: torch.Tensor) -> torch.Tensor:
        """Left-padded histories [B, L] and the next play's context [B] -> query vectors [B, D]."""
        histories = torch.as_tensor(histories, dtype=torch.long)
        if histories.shape[1] > self.config.max_seq_len:
            histories = histories[:, -self.config.max_seq_len :]
        (histories,) = trim_left_padding(histories, ids=histories)
        L = histories.shape[1]
        hours = torch.as_tensor(hours, dtype=torch.long).view(-1, 1).expand(-1, L)
        dows = torch.as_tensor(dows, dtype=torch.long).view(-1, 1).expand(-1, L)
        return self(histories, hours, dows)[:, -1]

    @torch.no_grad()
    def score_batch(self, histories: torch.Tensor, hours: torch.Tensor, dows: torch.Tensor) -> torch.Tensor:
        """Logits over the catalog [B, V]; PAD (column 0) is -inf. The caller picks eval mode."""
        scores = self.user_vectors(histories, hours, dows) @ self.item_embeddings().T
        scores[:, 0] = float("-inf")
        return scores

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
