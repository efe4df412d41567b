"""The published claims the lab checks (../shared/CLAIMS.md, C1-C9), as data: each claim's figure and
the cases that test it, as published and like for like, at the tutorial's setting.

The planner reads them (the default matrix measures every case a claim names) and the report's
claims check (elbolab.report.claims) evaluates them against a run.
"""

from __future__ import annotations

from dataclasses import dataclass

from elbolab.model.case import Case
from elbolab.model.workloads import WORKLOADS

SETTING = {"batch": 128, "input_dim": 784, "latent_dim": 20}


@dataclass(frozen=True)
class Spec:
    """A case the claims check looks up (at the claims' setting: batch 128, D=784, L=20)."""

    backend: str
    workload: str
    variant: str
    dtype: str
    device: str = "cpu"

    def label(self) -> str:
        parts = [self.backend if self.device == "cpu" else f"{self.backend} {self.device}", self.workload]
        if self.variant != "eps=given":
            parts.append(self.variant)
        return " ".join(parts + [self.dtype])

    def command(self, batch: int = 128) -> str:
        cmd = (
            f"elbolab run --backend {self.backend} --workload {self.workload} --batch {batch} "
            f"--dtype {self.dtype} --threads 1 --device {self.device}"
        )
        return cmd + (f" --variant {self.variant}" if self.variant != "eps=given" else "")

    def cost_bytes(self, batch: int = 128) -> int:
        case = Case(self.workload, self.backend, self.device, self.dtype, batch, variant=self.variant)
        return WORKLOADS[self.workload].cost(case).bytes


NUMPY_PUB = Spec("numpy", "elbo", "eps=sampled", "float64")
NUMPY_GIVEN = Spec("numpy", "elbo", "eps=given", "float64")
# the tutorial's PyTorch: float32, forward + elbo.backward(), eps drawn inside the timed call
TORCH_PUB = Spec("torch", "elbo_grad", "eps=sampled", "float32")
TORCH_LIKE = Spec("torch", "elbo", "eps=sampled", "float64")
CUDA_PUB = Spec("torch", "elbo_grad", "eps=sampled", "float32", "cuda")
CUDA_LIKE = Spec("torch", "elbo", "eps=sampled", "float64", "cuda")
# the tutorial's Rust: ndarray expressions with temporaries, a loop of iterations inside Rust
RUST_TUTORIAL = Spec("rust-tutorial", "elbo", "eps=sampled", "float64")
RUST_TUTORIAL_GIVEN = Spec("rust-tutorial", "elbo", "eps=given", "float64")
# elbolab's fused, hand-vectorised Rust, looped inside Rust (the stand-in when rust-tutorial is absent)
RUST_INNER = Spec("rust-inner", "elbo", "eps=sampled", "float64")
RUST_INNER_GIVEN = Spec("rust-inner", "elbo", "eps=given", "float64")
RUST_LIKE = Spec("rust", "elbo", "eps=sampled", "float64")
RUST_GIVEN = Spec("rust", "elbo", "eps=given", "float64")
RUST_PUB = "RUST_PUB"  # placeholder: rust-tutorial when the run has it, else rust-inner


@dataclass(frozen=True)
class Claim:
    """One published claim and the cases that test it.

    kind: 'time' (published is ns; specs: as-published, like-for-like), 'ratio' (published is x;
    specs: slow, fast as published, then slow, fast like for like), 'cuda' (time and ratio over the
    CPU), 'memory' (C7), 'profile' (C8), 'simd' (C9).
    """

    id: str
    claim: str
    figure: str
    kind: str
    published: float
    specs: tuple = ()
    # the words for "holds only when ..." when it holds as published only / like for like only
    pub_condition: str = "comparing unlike work as published"
    like_condition: str = "like for like (the published setting does not reproduce)"
    judge_like: bool = True  # False: the like-for-like figure is shown, not held to the claim
    pub_note: str = ""
    like_note: str = ""


CLAIMS: tuple[Claim, ...] = (
    Claim("C1", "NumPy ELBO per call", "0.182 ms (5,494 iter/s)", "time", 0.182e6, (NUMPY_PUB, NUMPY_GIVEN),
          like_condition="eps is given (no RNG in the timed call)", like_note="eps drawn outside the call"),
    Claim("C2", "PyTorch CPU, forward + backward", "0.245 ms (4,082 iter/s)", "time", 0.245e6,
          (TORCH_PUB, TORCH_LIKE), judge_like=False, pub_note="float32, forward + backward, as published",
          like_note="forward only, float64: the work NumPy did"),
    Claim("C3", "PyTorch CUDA, forward + backward; 2.75x over CPU", "0.089 ms (11,236 iter/s); 2.75x", "cuda",
          0.089e6, (CUDA_PUB, TORCH_PUB, CUDA_LIKE, NUMPY_PUB)),
    Claim("C4", "Rust (ndarray) per call", "0.0036 ms (277,778 iter/s)", "time", 3.6e3, (RUST_PUB, RUST_LIKE),
          pub_condition="the loop runs inside Rust (no per-call Python/FFI crossing)",
          like_note="called from Python per call, like NumPy"),
    Claim("C5", "Rust vs NumPy", "50.6x faster", "ratio", 50.6, (NUMPY_PUB, RUST_PUB, NUMPY_PUB, RUST_LIKE),
          like_note="both called from Python, same work"),
    Claim("C6a", "Rust vs PyTorch CPU", "68.1x faster", "ratio", 68.1, (TORCH_PUB, RUST_PUB, TORCH_LIKE, RUST_LIKE),
          like_note="same work (forward, float64, eps sampled), both called from Python"),
    Claim("C6b", "Rust vs PyTorch CUDA", "24.7x faster", "ratio", 24.7, (CUDA_PUB, RUST_PUB, CUDA_LIKE, RUST_LIKE),
          like_note="same work (forward, float64, eps sampled), both called from Python"),
    Claim("C7", "memory in use", "Python ~50 MB vs Rust ~12 MB (4.2x less)", "memory", 4.2, (NUMPY_PUB, RUST_LIKE)),
    Claim("C8", "profile of the NumPy kernel", "randn 45.6%, sum/mean 35.8%, exp 13.0%", "profile", 0.456,
          (NUMPY_PUB, NUMPY_GIVEN, RUST_LIKE, RUST_GIVEN)),
    Claim("C9", "hand-written SIMD Rust", "a further 2x over ndarray (0.0018 ms), 'expected'", "simd", 2.0,
          (RUST_TUTORIAL, RUST_INNER, RUST_TUTORIAL_GIVEN, RUST_INNER_GIVEN)),
)  # fmt: skip
