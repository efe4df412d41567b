"""A short real training run: the VAE of `vae_step` on the UCI handwritten digits.

Every backend trains from the same initial weights on the same batches with the same eps, each step
through the backend's own `vae_step` kernel (the one that is timed). What is held to account:

- every step: the backend's loss, gradients and updated weights against the float64 reference on
  the same inputs (its own current weights), with the bounds of elbolab.model.accuracy, so a float32
  curve is judged by what float32 arithmetic can give at each step, not by a flat tolerance on how
  far a chaotic trajectory drifted from another backend's;
- the end: that it learned, i.e. the final loss (the mean over the last FINAL_STEPS steps) is below
  that of the best model that ignores its input (a decoder with constant logits, the per-pixel
  log-odds of the data, and no KL): the bias-only negative ELBO of the data;
- and, for the record, how far each curve is from NumPy's in the same dtype.

The digits (8x8, 1797 images: the UCI optdigits test set, CC BY 4.0) ship with the lab in
data/digits.csv.gz (data/README.md says where from): no download, and no scikit-learn for one file.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from elbolab.model.backend import Backend
from elbolab.model.case import Case
from elbolab.model.workloads import VAE_PARAMS, WORKLOADS, check_outputs, init_vae_params

DATASET = "UCI digits 8x8 (optdigits test set), scaled to [0,1]"
DIGITS_FILE = Path(__file__).parent / "data" / "digits.csv.gz"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch: int = 64
    hidden_dim: int = 64
    latent_dim: int = 4
    lr: float = 0.1
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def digits_table() -> tuple[np.ndarray, np.ndarray]:
    """The images as [1797, 64] pixel counts 0..16 and their digits [1797]."""
    with gzip.open(DIGITS_FILE, "rt", encoding="ascii") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :-1], table[:, -1]


def digits() -> np.ndarray:
    return digits_table()[0] / 16.0  # [1797, 64], pixel intensities 0..1


def batches(cfg: TrainConfig, data: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The same (x, eps) sequence for every backend: shuffled epochs, fresh eps each step."""
    rng = np.random.default_rng([cfg.seed, 1])
    order = rng.permutation(len(data))
    pos = 0
    for _ in range(cfg.steps):
        if pos + cfg.batch > len(order):
            order, pos = rng.permutation(len(data)), 0
        yield data[order[pos : pos + cfg.batch]], rng.standard_normal((cfg.batch, cfg.latent_dim))
        pos += cfg.batch


@dataclass(frozen=True)
class Trained:
    losses: list[float]  # the loss before each SGD step
    # the largest share of its error bound any step's output used (> 1: that step was incorrect)
    max_bound_used: float
    incorrect_step: str | None  # the first step whose outputs failed the check, and why
    less_accurate_steps: int  # steps whose outputs were valid but less accurate than careful arithmetic


# Each step's loss is on a fresh minibatch of 64 digits, so one step's figure scatters by about
# +-0.5 nats around the model's loss (the bias-only loss is 27.1); the mean of the last steps is the
# estimate of the trained model's loss (slightly high: the model still improves over those steps).
FINAL_STEPS = 20


def final_loss(losses) -> float:
    """The trained model's loss: the mean of the last FINAL_STEPS steps' minibatch losses."""
    return float(np.mean(losses[-FINAL_STEPS:]))


def bias_only_loss(data: np.ndarray) -> float:
    """Negative ELBO per example of the best model that ignores its input: Bernoulli pixels with
    constant probabilities p_d = mean x_d (no latent, so no KL)."""
    p = np.clip(data.mean(axis=0), 1e-12, 1 - 1e-12)
    nll = -(data * np.log(p) + (1 - data) * np.log1p(-p)).sum(axis=1)
    return float(nll.mean())


def train(backend: Backend, device: str, dtype: str, threads: int, cfg: TrainConfig) -> Trained:
    """Train with the backend's vae_step kernel, checking every step against the reference."""
    data = digits()
    d = data.shape[1]
    params = init_vae_params(d, cfg.hidden_dim, cfg.latent_dim, np.random.default_rng([cfg.seed, 2]))
    params = {k: v.astype(dtype) for k, v in params.items()}
    case = Case(
        "vae_step", backend.name, device, dtype, cfg.batch, d, cfg.latent_dim, cfg.hidden_dim,
        threads=threads, seed=cfg.seed,
    )  # fmt: skip
    losses: list[float] = []
    worst, incorrect, loose = 0.0, None, 0
    lr = np.array(cfg.lr, dtype=dtype)
    for x, eps in batches(cfg, data):
        inputs = {"x": x.astype(dtype), "eps": eps.astype(dtype), "lr": lr, **params}
        prepared = backend.prepare(case, {k: v.copy() for k, v in inputs.items()})
        prepared.call()
        if prepared.sync:
            prepared.sync()
        out = prepared.outputs()
        check = check_outputs(WORKLOADS["vae_step"], case, inputs, out)
        if not check.ok and incorrect is None:
            incorrect = f"step {len(losses)}: {check.detail}"
        loose += check.less_accurate
        worst = max(worst, (check.error_units or 0.0) / check.bound_units if check.bound_units else 0.0)
        loss = float(np.asarray(out["loss"]))
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {len(losses)}")
        losses.append(loss)
        params = {p: np.array(out[f"new_{p}"], dtype=dtype, order="C") for p in VAE_PARAMS}
    return Trained(losses, worst, incorrect, loose)


def curve_difference(curve: list[float], reference: list[float]) -> float:
    a, b = np.asarray(curve), np.asarray(reference)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b) / np.abs(b)))


def curves(entries: list[dict]) -> list[dict]:
    """Each backend's training record completed for the record: whether it learned (its final loss
    below the bias-only loss of the data) and how far its curve is from NumPy's in the same dtype
    and in float64."""
    baseline = bias_only_loss(digits())
    reference = {e["dtype"]: e["losses"] for e in entries if e["backend"] == "numpy" and e.get("losses")}
    out = []
    for e in entries:
        e = dict(e)
        losses = e.get("losses") or []
        if losses:
            e["bias_only_loss"] = baseline
            e["learned"] = final_loss(losses) < baseline
            if e["dtype"] in reference:
                e["max_rel_diff_vs_numpy"] = curve_difference(losses, reference[e["dtype"]])
            if "float64" in reference:
                e["max_rel_diff_vs_numpy_float64"] = curve_difference(losses, reference["float64"])
        e["losses"] = tuple(losses)
        out.append(e)
    return out
