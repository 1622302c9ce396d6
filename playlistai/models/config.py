"""ModelConfig: everything needed to rebuild a sequence model's architecture (not its weights)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

FAMILIES = ("sasrec", "gru4rec")
# `transformer` is the seed's name for SASRec (Settings.MODEL_NAME); both mean the same model
ALIASES = {"transformer": "sasrec"}


def canonical_family(name: str) -> str:
    name = str(name).strip().lower()
    name = ALIASES.get(name, name)
    if name not in FAMILIES:
        allowed = ", ".join([*FAMILIES, *ALIASES])
        raise ValueError(f"unknown model {name!r}; expected one of: {allowed}")
    return name


@dataclass
class ModelConfig:
    family: str = "sasrec"          # 'sasrec' | 'gru4rec' ('transformer' is accepted for 'sasrec')
    vocab_size: int = 2             # embedding rows, PAD (index 0) included
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 2                # SASRec only
    dropout: float = 0.2
    max_seq_len: int = 50           # SASRec's position table; histories are cut to this length
    use_context: bool = True        # mix (hour, day of week) of the predicted event in before scoring
    cosine_scale: float = 0.0       # > 0: cosine similarity x this; 0: inner product (checkpoints without the field)

    def __post_init__(self) -> None:
        self.family = canonical_family(self.family)
        self.validate()

    def validate(self) -> None:
        problems = []
        if self.vocab_size < 2:
            problems.append(f"vocab_size must be >= 2 (PAD + at least one track), got {self.vocab_size}")
        if self.d_model < 1:
            problems.append(f"d_model must be positive, got {self.d_model}")
        if self.n_layers < 1:
            problems.append(f"n_layers must be >= 1, got {self.n_layers}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.cosine_scale >= 0:
            problems.append(f"cosine_scale must be >= 0 (0 = inner product), got {self.cosine_scale}")
        if self.max_seq_len < 1:
            problems.append(f"max_seq_len must be >= 1, got {self.max_seq_len}")
        if self.family == "sasrec":
            if self.n_heads < 1:
                problems.append(f"n_heads must be >= 1, got {self.n_heads}")
            elif self.d_model % self.n_heads:
                problems.append(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        if "model" in d and "family" not in d:      # the entry point's param name
            d["family"] = d.pop("model")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        return cls(**d)
