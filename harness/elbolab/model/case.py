"""The frozen spec of one measurement. Everything a measurement needs travels in the case."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Annotated

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

DTYPES = ("float64", "float32")
# the sizes a case may vary, with the defaults of the tutorial's MNIST VAE
SIZE_FIELDS = ("input_dim", "latent_dim", "hidden_dim", "importance_samples")

Positive = Annotated[int, Field(ge=1)]
Name = Annotated[str, Field(min_length=1, max_length=200)]

# strict: a results file with "batch": "128" or "threads": true is refused, not coerced
STRICT = ConfigDict(strict=True, extra="forbid")


@dataclass(frozen=True, order=True, config=STRICT)
class Case:
    workload: Name
    backend: Name
    device: Name = "cpu"
    dtype: Name = "float64"
    batch: Positive = 128
    input_dim: Positive = 784  # D
    latent_dim: Positive = 20  # L
    hidden_dim: Positive = 400  # H (vae_step)
    importance_samples: Positive = 8  # K (iwae)
    threads: Positive = 1
    variant: Name = "eps=given"
    seed: Annotated[int, Field(ge=0)] = 0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Case:
        """A case from its JSON object; TypeError/ValueError on unknown or badly typed fields."""
        if not isinstance(data, dict):
            raise TypeError(f"a case is an object, got {type(data).__name__}")
        return cls(**data)

    def key(self) -> tuple:
        """Identity of a case across runs (used by --resume and compare)."""
        return tuple(getattr(self, f.name) for f in fields(self))

    def label(self) -> str:
        parts = [self.workload, self.backend, self.device, self.dtype, f"B={self.batch}", f"t={self.threads}"]
        sizes = [
            f"{short}={getattr(self, name)}"
            for name, short in zip(SIZE_FIELDS, ("D", "L", "H", "K"), strict=True)
            if getattr(self, name) != _DEFAULT_SIZES[name]
        ]
        parts += sizes
        if self.variant != "eps=given":
            parts.append(self.variant)
        return " ".join(parts)


_DEFAULT_SIZES = {f.name: f.default for f in fields(Case) if f.name in SIZE_FIELDS}
