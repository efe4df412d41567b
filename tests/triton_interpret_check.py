"""Run the fused Triton ELBO kernel in Triton's interpreter on the CPU and check it like a backend
(python -m tests.triton_interpret_check; used by tests/test_gpu_variants.py). TRITON_INTERPRET must be
set before triton is imported, hence a process of its own."""

from __future__ import annotations

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"


def main() -> int:
    import torch

    from backends.torch import fused
    from elbolab.model.case import Case
    from elbolab.model.workloads import WORKLOADS, check_outputs

    results = []
    for workload in ("elbo", "elbo_grad"):
        for dtype in ("float64", "float32"):
            for b, d, lat, scale in ((37, 783, 5, 1.0), (1, 1, 1, 1.0), (64, 17, 33, 1e-6)):
                case = Case(workload, "torch-triton", "cpu", dtype, b, d, lat)
                inputs = WORKLOADS[workload].make_inputs(case)
                inputs["logvar"] = inputs["logvar"] * scale  # 1e-6: near zero KL, where cancelling forms fail
                t = {k: torch.from_numpy(v.copy()) for k, v in inputs.items()}
                z = torch.empty_like(t["mu"])
                rows = torch.empty(b, dtype=torch.float64), torch.empty(b, dtype=torch.float64)
                grads = None
                if WORKLOADS[workload].has_gradients:
                    grads = (
                        torch.empty_like(t["x"]),
                        torch.empty_like(t["mu"]),
                        torch.empty_like(t["logvar"]),
                    )
                consts = torch.tensor(fused.constants(b), dtype=t["x"].dtype)
                recon, kl = fused.launch(
                    t["x"], t["x_recon"], t["mu"], t["logvar"], t["eps"], z, grads, *rows, consts
                )
                out = {"z": z.numpy(), "recon": recon.numpy(), "kl": kl.numpy(), "elbo": (recon - kl).numpy()}
                if grads:
                    out.update(
                        grad_x_recon=grads[0].numpy(), grad_mu=grads[1].numpy(), grad_logvar=grads[2].numpy()
                    )
                check = check_outputs(WORKLOADS[workload], case, inputs, out)
                results.append({"case": case.label() + f" logvar x{scale:g}", "ok": check.ok,
                                "less_accurate": check.less_accurate, "detail": check.detail})  # fmt: skip
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
