"""`-k EXPR` (elbolab.model.selection): pytest's keyword grammar over a case's names, `field=value`
terms, and the commands that take it (run's plan, show, compare).

The parser is held to pytest's own (`_pytest.mark.expression`, the parser of `pytest -k`) on random
expressions: the same parse errors and the same answers, with pytest's matcher (a case-insensitive
substring of one of the names)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elbolab.cli import main
from elbolab.measure.plan import Plan, plan_cases
from elbolab.model.backend import discover
from elbolab.model.case import Case
from elbolab.model.errors import UsageError
from elbolab.model.selection import Selection, names
from elbolab.store.results import save
from tests.builders import make_run, ok

CASES = [
    Case("elbo", "rust"),
    Case("elbo", "rust", variant="eps=sampled"),
    Case("elbo_grad", "numpy", batch=1),
    Case("iwae", "numba", dtype="float32", threads=2),
    Case("elbo", "rust-inner", batch=8192, input_dim=64),
    Case("vae_step", "numpy-control", device="cuda"),
]


def chosen(expr: str) -> list[str]:
    return [c.label() for c in Selection.parse(expr).select(CASES)]


def test_the_issue_example_and_pytest_substring_semantics():
    assert chosen("rust and elbo and not sampled") == [
        "elbo rust cpu float64 B=128 t=1",
        "elbo rust-inner cpu float64 B=8192 t=1 D=64",
    ]
    # as in pytest, a word is a substring: elbo matches elbo_grad, numpy matches numpy-control
    assert chosen("elbo and not elbo_grad and not rust") == []
    assert chosen("numpy") == [
        "elbo_grad numpy cpu float64 B=1 t=1",
        "vae_step numpy-control cuda float64 B=128 t=1",
    ]
    assert chosen("NUMBA") == ["iwae numba cpu float32 B=128 t=2"]  # case-insensitive, as pytest
    assert chosen("given and cuda") == [
        "vae_step numpy-control cuda float64 B=128 t=1"
    ]  # the variant is a name


def test_field_terms_are_exact():
    assert chosen("B=1") == ["elbo_grad numpy cpu float64 B=1 t=1"]  # not B=128 nor B=8192
    assert chosen("batch=8192 or t=2") == [
        "iwae numba cpu float32 B=128 t=2",
        "elbo rust-inner cpu float64 B=8192 t=1 D=64",
    ]
    assert chosen("backend=rust") == [
        "elbo rust cpu float64 B=128 t=1",
        "elbo rust cpu float64 B=128 t=1 eps=sampled",
    ]
    assert chosen("eps=sampled") == ["elbo rust cpu float64 B=128 t=1 eps=sampled"]
    assert chosen("D=64 and not (L=20 and K=9)") == ["elbo rust-inner cpu float64 B=8192 t=1 D=64"]
    assert chosen("dtype=FLOAT32") == ["iwae numba cpu float32 B=128 t=2"]


def test_precedence_is_pytests_not_binds_tighter_than_and_than_or():
    # 'a or b and not c' = a or (b and (not c))
    assert chosen("iwae or elbo_grad and not numpy") == ["iwae numba cpu float32 B=128 t=2"]
    assert chosen("(iwae or elbo_grad) and not numba") == ["elbo_grad numpy cpu float64 B=1 t=1"]
    assert chosen("not not vae_step") == ["vae_step numpy-control cuda float64 B=128 t=1"]


@pytest.mark.parametrize(
    ("expr", "says"),
    [
        ("rust and", "expected 'not' or '(' or a name at column 9, got the end"),
        ("(elbo", "expected ')' at column 6, got the end"),
        ("elbo )", "expected the end at column 6"),
        ("elbo $", "unexpected character '$' at column 6"),
        ("bakend=rust", "'bakend=rust' names no field of a case"),
        ("B=many", "'B=many' needs an integer"),
        ("B=", "'B=' gives no value"),
        ("   ", "-k needs an expression"),
    ],
)
def test_bad_expressions_are_one_line(expr, says):
    with pytest.raises(UsageError, match=None) as err:
        Selection.parse(expr)
    assert says in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------- against pytest's parser

expression_mod = pytest.importorskip("_pytest.mark.expression")

WORDS = [
    "elbo",
    "rust",
    "numpy",
    "grad",
    "cuda",
    "float32",
    "b",
    "x",
    "1",
    "given",
    "and",
    "or",
    "not",
    "(",
    ")",
]


def pytest_says(expr: str, case: Case):
    """What `pytest -k expr` decides for an item whose names are the case's, or 'error'."""
    try:
        compiled = expression_mod.Expression.compile(expr)
    except SyntaxError:
        return "error"
    case_names = names(case)
    return compiled.evaluate(lambda ident, **kw: any(ident.lower() in n for n in case_names))


def ours_says(expr: str, case: Case):
    try:
        return Selection.parse(expr).matches(case)
    except UsageError:
        return "error"


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=9), st.sampled_from(CASES))
def test_the_same_answers_and_errors_as_pytests_own_parser(words, case):
    expr = " ".join(words)
    assert ours_says(expr, case) == pytest_says(expr, case), expr


# --------------------------------------------------------------------------------- the commands


def test_a_plan_keeps_the_cases_k_selects():
    backends = {"numpy": discover()["numpy"]}
    plan = Plan(backends=("numpy",), workloads=("elbo", "iwae"), dtypes=("float64", "float32"), threads=(1,))
    every = plan_cases(plan, backends)
    some = plan_cases(Plan(**{**plan.__dict__, "keyword": "iwae and float32 or B=1"}), backends)
    assert some == [c for c in every if (c.workload == "iwae" and c.dtype == "float32") or c.batch == 1]
    assert 0 < len(some) < len(every)
    assert Plan(keyword="elbo").to_json()["keyword"] == "elbo"  # recorded in the run's config
    with pytest.raises(UsageError, match="selects none of the"):
        plan_cases(Plan(**{**plan.__dict__, "keyword": "vae_step"}), backends)


def test_run_refuses_a_bad_expression_before_measuring(tmp_path, capsys):
    code = main(["run", "--backend", "numpy", "-k", "elbo and", "--out", str(tmp_path / "r.json")])
    assert code == 2 and not (tmp_path / "r.json").exists()
    assert "expected 'not' or '(' or a name" in capsys.readouterr().err


def test_show_and_compare_take_k(tmp_path, capsys):
    runs = [
        make_run([ok(c, [1000.0 * (1 + i)] * 9) for i, c in enumerate(CASES)], run_id=rid)
        for rid in ("a", "b")
    ]
    for r in runs:
        save(tmp_path / f"{r.run_id}.json", r)
    assert main(["show", str(tmp_path / "a.json"), "--json", "-k", "rust and not sampled"]) == 0
    shown = [c["case"] for c in json.loads(capsys.readouterr().out)["cases"]]
    assert [(c["backend"], c["batch"]) for c in shown] == [("rust", 128), ("rust-inner", 8192)]
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json", "-k", "numpy"]) == 0
    compared = json.loads(capsys.readouterr().out)["comparisons"]
    assert sorted(c["case"]["backend"] for c in compared) == ["numpy", "numpy-control"]


def test_the_ab_gate_plans_only_the_cases_k_selects():
    from elbolab.gate.ab import plan_for
    from elbolab.gate.revisions import ABConfig, run_argv

    config = ABConfig("main", run_filters=(("backend", ("numpy",)), ("workload", ("elbo",))), quick=True,
                      keyword="B=128 or B=1")  # fmt: skip
    backends = {"numpy": discover()["numpy"]}
    every = plan_for(replace(config, keyword=None), backends, set())
    cases = plan_for(config, backends, set())
    assert {c.batch for c in every} == {1, 128, 4096}  # --quick's elbo batches
    assert cases == [c for c in every if c.batch in (1, 128)]
    # not forwarded to a base revision's own `elbolab run` (older ones have no -k): the gate selects after
    assert "-k" not in run_argv(config, Path("out.json"), set(), ["numpy"], "elbolab.cli")
