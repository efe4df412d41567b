"""A minimal third-party backend for elbolab: the elbo and elbo_grad workloads in plain NumPy.

Install it (`pip install ./examples/plugin`) and `elbolab list` shows `example`; `elbolab run
--backend example` measures it like any built-in backend, in worker processes, checked against the
reference. What a backend must provide is in README.md, "Writing a backend".
"""

from __future__ import annotations

import numpy as np
from elbolab.model.backend import Backend, Prepared
from elbolab.model.case import Case
from elbolab.model.workloads import WORKLOADS


def prepare_elbo(case: Case, inputs: dict) -> Prepared:
    """inputs: x, x_recon [B,D]; mu, logvar [B,L]; eps [B,L] unless the variant is eps=sampled."""
    x, x_recon, mu, logvar = (inputs[k] for k in ("x", "x_recon", "mu", "logvar"))
    b = x.shape[0]
    grads = WORKLOADS[case.workload].has_gradients
    rng = np.random.default_rng(case.seed)
    out: dict = {"eps": inputs.get("eps")}

    def call() -> None:
        if case.variant == "eps=sampled":  # drawn inside the timed call, and returned for the check
            out["eps"] = rng.standard_normal(mu.shape).astype(x.dtype)
        out["z"] = mu + np.exp(0.5 * logvar) * out["eps"]
        diff = x - x_recon
        out["recon"] = -np.sum(diff * diff) / b
        out["kl"] = 0.5 * np.sum(mu * mu + (np.expm1(logvar) - logvar)) / b
        out["elbo"] = out["recon"] - out["kl"]
        if grads:
            out["grad_x_recon"] = diff * (2.0 / b)
            out["grad_mu"] = -mu / b
            out["grad_logvar"] = -np.expm1(logvar) / (2.0 * b)

    def outputs() -> dict:
        names = WORKLOADS[case.workload].outputs(case)  # z, recon, kl, elbo (+ eps, + gradients)
        return {name: np.asarray(out[name]) for name in names}

    return Prepared(call=call, outputs=outputs, notes={"implementation": "plain NumPy, a third-party plugin"})


backend = Backend(
    name="example",
    description="plain NumPy elbo and elbo_grad from a third-party package (examples/plugin)",
    preparers={"elbo": prepare_elbo, "elbo_grad": prepare_elbo},
    versions=lambda: {"numpy": np.__version__, "elbolab-plugin-example": "0.1.0"},
)
