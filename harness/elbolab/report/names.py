"""What the names in a report mean: every backend, variant and mark is explained where it appears.

The report reads only results files, which name a backend but do not describe it; the built-in
backends are described here in the words of their own definitions (backends/*/__init__.py), and
any other name is said to be a plugin's. One place, so the HTML legend, the Markdown summary and
the console say the same thing.
"""

from __future__ import annotations

from elbolab.model.backend import CONTROL_SUFFIX, is_control

BACKENDS = {
    "numpy": "NumPy, vectorised, one Python call per call: the baseline of every speed-up",
    "torch": "PyTorch eager (autograd for gradients: the tutorial's PyTorch)",
    "torch-compile": "PyTorch through torch.compile (Inductor); its compile time is the first call",
    "torch-cudagraph": "eager PyTorch captured as a CUDA graph and replayed, one launch per call",
    "torch-triton": "one fused Triton kernel on CUDA",
    "numba": "Numba @njit, one fused serial pass",
    "numba-parallel": "Numba @njit(parallel=True), prange over batch rows",
    "rust": "the fused Rust kernel, one Python-to-Rust call per call (as NumPy is called)",
    "rust-inner": "the same Rust kernel with the n calls looped inside Rust (call_n): no Python or FFI "
    "crossing per call, the tutorial's way of timing Rust",
    "rust-tutorial": "the tutorial's own Rust: ndarray expressions with a temporary per operation, "
    "looped inside Rust",
}
VARIANTS = {
    "eps=given": "eps passed in: no random numbers drawn in the timed call",
    "eps=sampled": "eps drawn inside the timed call, as the tutorial timed NumPy and Rust",
}


def describe_backend(name: str) -> str:
    """One line on what a backend is (the null control says what it is for)."""
    if is_control(name):
        base = name[: -len(CONTROL_SUFFIX)]
        return (f"{base} measured again in a worker of its own: the run's null control (identical code; its "
                f"distance from 1x is noise no interval can see)")  # fmt: skip
    return BACKENDS.get(name, "a backend from a plugin package (its description is not in the results file)")


def glossary(names) -> list[tuple[str, str]]:
    """(name, meaning) for the backends given, in their order, each once."""
    return [(n, describe_backend(n)) for n in dict.fromkeys(names)]
