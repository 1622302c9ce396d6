"""What every sequence model offers, so training, evaluation, packaging and serving treat
SASRec and GRU4Rec alike.

Conventions: index 0 is PAD; histories are left-padded (the most recent track is the last
column); `hours`/`dows` at step t are the context of the event *predicted* at step t.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from playlistai.models.config import ModelConfig
from playlistai.models.neighbours import SessionNeighbours


def trim_left_padding(*tensors: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop leading columns that are padding in every row.

    Models are padding-invariant, so this changes no output; it only saves the compute a batch of
    short histories would spend on a max_seq_len-wide window.
    """
    nonpad = (ids != 0).any(dim=0)
    first = int(nonpad.float().argmax()) if bool(nonpad.any()) else ids.shape[1] - 1
    return tuple(t[:, first:] for t in tensors)


def add_repeat_bonus(scores: torch.Tensor, histories: torch.Tensor, bonus: float) -> torch.Tensor:
    """scores [B, V] += bonus on every track of the row's history, once per track; in place."""
    if bonus:
        # gather before scatter: a track twice in a history gets the same (single) bonus twice
        scores.scatter_(1, histories, scores.gather(1, histories) + bonus)
    return scores


class SequenceRecommender(nn.Module):
    """Scores: query_vectors . item_embeddings, plus `repeat_bonus` for tracks of the history, plus
    `neighbour_weight` x the session neighbours' votes (scaled to [0, 1] per row) when the model has
    neighbours.

    The repeat bonus is how much more likely a track already in the session is to come next than
    its embedding says. Listening and browsing repeat (a fifth of DIGINETICA's targets are in their
    own prefix), and an inner product has no notion of "this one again". It is one number, fitted
    on the validation cases after every epoch (training/score_terms.py) rather than learned by
    gradient, and kept as a buffer so the best epoch's weights carry their own bonus. It only
    matters where history tracks may be recommended (`exclude_seen=false`).

    The neighbours (models/neighbours.py) are the training sessions most like this one: their
    votes lift the tracks those sessions went on to hold (and, with a share of their own, the
    tracks that came right after the last one). The weight is fitted on validation once training
    ends (training/neighbour_mix.py), with the repeat bonus, because votes lift history tracks too. The sessions travel beside the weights in the checkpoint (not a tensor: sparse).
    """

    config: ModelConfig
    item_emb: nn.Embedding
    repeat_bonus: torch.Tensor
    neighbour_weight: torch.Tensor
    neighbours: SessionNeighbours | None

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("repeat_bonus", torch.zeros(()))
        self.register_buffer("neighbour_weight", torch.zeros(()))
        self.register_load_state_dict_pre_hook(_checkpoint_without_score_terms)
        self.neighbours = None

    def forward(self, input_ids: torch.Tensor, hours: torch.Tensor, dows: torch.Tensor) -> torch.Tensor:
        """input_ids, hours, dows [B, L] -> query vectors [B, L, D]: scores are output @ item_embeddings().T."""
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:
        """The tied item table [V, D] as scoring sees it; row 0 is PAD."""
        if self.config.cosine_scale:
            return F.normalize(self.item_emb.weight, dim=-1)
        return self.item_emb.weight

    def item_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """item_embeddings()[ids], computing only those rows.

        What a sampled loss needs: normalising the whole table for a few thousand rows is most of a
        step's work on a catalog of a million tracks. The gather is the embedding's own, so with
        `item_emb.sparse` set its gradient is sparse too (training/loop.py, `item_updates`)."""
        rows = F.embedding(ids, self.item_emb.weight, padding_idx=self.item_emb.padding_idx,
                           sparse=self.item_emb.sparse)
        return F.normalize(rows, dim=-1) if self.config.cosine_scale else rows

    def query_vectors(self, hidden: torch.Tensor) -> torch.Tensor:
        """The last step of every model: hidden states [..., D] -> the vectors scored against
        item_embeddings().

        With `cosine_scale` both sides are unit vectors and the query carries the scale (an inverse
        temperature). An inner product lets a track's norm grow with its popularity, and on a long
        tail the popular tracks then crowd the top of every list; cosine scores rank by direction
        alone (NISER, Gupta et al. 2019; CORE, Hou et al. 2022). The scale must be large enough
        (~10-20) for a softmax over tens of thousands of tracks to become peaked. Scores stay one
        inner product, so a FAISS inner-product index still reproduces them exactly.
        """
        if self.config.cosine_scale:
            return F.normalize(hidden, dim=-1) * self.config.cosine_scale
        return hidden

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
    def score_batch(
        self, histories: torch.Tensor, hours: torch.Tensor, dows: torch.Tensor, with_score_terms: bool = True
    ) -> torch.Tensor:
        """Scores over the catalog [B, V]; PAD (column 0) is -inf. The caller picks eval mode.
        `with_score_terms=False` leaves out the repeat bonus and the neighbours' votes."""
        scores = self.user_vectors(histories, hours, dows) @ self.item_embeddings().T
        if with_score_terms:
            histories = torch.as_tensor(histories, dtype=torch.long)[:, -self.config.max_seq_len :]
            add_repeat_bonus(scores, histories.to(scores.device), float(self.repeat_bonus))
            if self.mixes_neighbours:
                scores += float(self.neighbour_weight) * self.neighbours.scaled_votes(histories).to(scores.device)
        scores[:, 0] = float("-inf")
        return scores

    @property
    def mixes_neighbours(self) -> bool:
        return self.neighbours is not None and float(self.neighbour_weight) != 0.0


def _checkpoint_without_score_terms(module, state_dict, prefix, *args) -> None:
    # checkpoints written before the repeat bonus or the neighbour mix existed scored without them
    state_dict.setdefault(prefix + "repeat_bonus", torch.zeros(()))
    state_dict.setdefault(prefix + "neighbour_weight", torch.zeros(()))
