"""A case named the way elbolab prints it ('elbo numpy cpu float64 B=128 t=1'), or part of it."""

from __future__ import annotations

from dataclasses import dataclass

from elbolab.model.case import SIZE_FIELDS, Case
from elbolab.model.errors import UsageError
from elbolab.model.workloads import WORKLOADS

_SHORT = {"B": "batch", "t": "threads", "D": "input_dim", "L": "latent_dim", "H": "hidden_dim",
          "K": "importance_samples", "seed": "seed"}  # fmt: skip
_INT_FIELDS = {"batch", "threads", "seed", *SIZE_FIELDS}
_FIELDS = tuple(Case.__dataclass_fields__)


@dataclass(frozen=True)
class CaseQuery:
    """A case named the way elbolab prints it ('elbo numpy cpu float64 B=128 t=1'), or part of it:
    bare words match the workload, backend, device or dtype; B= t= D= L= H= K= seed= the numbers;
    field=value any field; any other a=b the variant ('eps=sampled')."""

    text: str
    words: tuple[str, ...]
    fields: tuple[tuple[str, object], ...]

    @classmethod
    def parse(cls, text: str) -> CaseQuery:
        tokens = text.replace(",", " ").split()
        if not tokens:
            raise UsageError("--case is empty; name a case such as 'elbo numpy cpu float64 B=128 t=1'")
        words, fields = [], {}
        for tok in tokens:
            key, sep, value = tok.partition("=")
            if not sep:
                words.append(tok)
                continue
            name = _SHORT.get(key, key if key in _FIELDS else None)
            if name is None:
                name, value = "variant", tok
            if name in _INT_FIELDS:
                try:
                    value = int(value)
                except ValueError:
                    raise UsageError(f"--case {text!r}: {tok!r} needs an integer") from None
            if name in fields and fields[name] != value:
                raise UsageError(f"--case {text!r}: {name} is given twice")
            fields[name] = value
        return cls(text, tuple(words), tuple(sorted(fields.items())))

    def matches(self, case: Case) -> bool:
        named = (case.workload, case.backend, case.device, case.dtype)
        return all(w in named for w in self.words) and all(getattr(case, k) == v for k, v in self.fields)

    def select(self, cases: dict[str, Case]) -> dict[str, Case]:
        """The stored cases it names; an exact label wins over the cases it merely matches."""
        found = {cid: c for cid, c in cases.items() if self.matches(c)}
        exact = {cid: c for cid, c in found.items() if c.label() == " ".join(self.text.split())}
        if len(exact) == 1:
            return exact
        if not found:
            raise UsageError(f"--case {self.text!r} matches no stored case{_hint(cases)}")
        return found

    def to_case(self) -> Case:
        """The one case it names, defaults filling what it does not say (workload and backend needed)."""
        spec: dict = dict(self.fields)
        for w in self.words:
            if w in WORKLOADS:
                slot = "workload"
            elif w in ("float64", "float32"):
                slot = "dtype"
            elif w == "cpu" or w.startswith(("cuda", "mps", "xpu")):
                slot = "device"
            else:
                slot = "backend"
            if slot in spec and spec[slot] != w:
                raise UsageError(f"--case {self.text!r}: two values for {slot} ({spec[slot]}, {w})")
            spec[slot] = w
        for need in ("workload", "backend"):
            if need not in spec:
                raise UsageError(
                    f"--case {self.text!r} names no {need}; e.g. 'elbo numpy cpu float64 B=128 t=1'"
                )
        try:
            return Case(**spec)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--case {self.text!r}: {str(exc).splitlines()[0]}") from None


def _hint(cases: dict[str, Case]) -> str:
    if not cases:
        return " (the store holds no measurements yet)"
    some = sorted({c.label() for c in cases.values()})[:3]
    return f"; stored cases look like {', '.join(repr(s) for s in some)}"
