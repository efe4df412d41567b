"""The frozen spec of one measurement. Everything a measurement needs travels in the case."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

DTYPES = ("float64", "float32")


@dataclass(frozen=True, order=True)
class Case:
    workload: str
    backend: str
    device: str = "cpu"
    dtype: str = "float64"
    batch: int = 128
    input_dim: int = 784
    latent_dim: int = 20
    hidden_dim: int = 400
    samples: int = 8
    threads: int = 1
    variant: str = "eps=given"
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Case:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown case fields {sorted(unknown)}")
        return cls(**data)

    def key(self) -> tuple:
        """Identity of a case across runs (used by --resume and compare)."""
        return tuple(getattr(self, f.name) for f in fields(self))

    def label(self) -> str:
        parts = [self.workload, self.backend, self.device, self.dtype, f"B={self.batch}", f"t={self.threads}"]
        if self.variant != "eps=given":
            parts.append(self.variant)
        return " ".join(parts)
