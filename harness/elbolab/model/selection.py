"""`-k EXPR`: choosing cases with pytest's keyword grammar ("rust and elbo and not sampled").

The grammar is pytest's `-k` (_pytest/mark/expression.py), with one addition, `field=value`:

    expression: expr EOF
    expr:       and_expr ('or' and_expr)*
    and_expr:   not_expr ('and' not_expr)*
    not_expr:   'not' not_expr | '(' expr ')' | ident
    ident:      (\\w|:|+|-|.|[|]|\\|/|=)+        pytest's characters, and '='

- A word matches as in pytest: a case-insensitive substring of one of the case's names, the words
  of its label and its variant ('elbo numpy cpu float64 B=128 t=1', 'eps=given'). So, as in pytest,
  `elbo` also matches elbo_grad and `rust` matches rust-inner: `elbo and not elbo_grad`.
- `field=value` (a word with '=') is exact: `B=128` or `batch=128`, `t=2`, `D=`, `L=`, `H=`, `K=`,
  `seed=`, any field of the case (`backend=rust`), or a variant (`eps=sampled`). An unknown field
  is an error, so a typo cannot select nothing in silence.

Why not pytest's own parser: pytest is a test tool, not a dependency of the lab (an install that
only gates has no pytest); `_pytest` is private and its matcher protocol changed in pytest 8 (keyword
arguments for -m); and it reads '=' as a token of -m's arguments, so `B=128` could not be a term.
tests/test_selection.py holds this parser to pytest's on random expressions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from elbolab.model.case import SIZE_FIELDS, Case
from elbolab.model.errors import UsageError
from elbolab.model.workloads import WORKLOADS

# the short names of the label (B=128 t=1 D= L= H= K=) and seed=, as elbolab.model.query reads them
SHORT = {"B": "batch", "t": "threads", "D": "input_dim", "L": "latent_dim", "H": "hidden_dim",
         "K": "importance_samples"}  # fmt: skip
FIELDS = tuple(Case.__dataclass_fields__)
INT_FIELDS = {"batch", "threads", "seed", *SIZE_FIELDS}
# the keys of the variants ('eps' of eps=given): such a term names a variant
VARIANT_KEYS = {v.partition("=")[0] for w in WORKLOADS.values() for v in w.variants}

_TOKEN = re.compile(r"\s*(?:(?P<paren>[()])|(?P<ident>(?:\w|[:+\-.\[\]\\/=])+)|(?P<bad>\S))")
_KEYWORDS = ("and", "or", "not")

T = TypeVar("T")


@dataclass(frozen=True)
class Selection:
    """A parsed -k expression; `matches(case)` evaluates it."""

    text: str
    tree: tuple  # ('or'|'and', a, b), ('not', a), ('word', text), ('field', name, value)

    @classmethod
    def parse(cls, text: str) -> Selection:
        tokens = _tokens(text)
        if len(tokens) == 1:  # only the end: pytest evaluates an empty -k as "select everything"
            raise UsageError("-k needs an expression, e.g. -k 'rust and elbo and not sampled'")
        parser = _Parser(text, tokens)
        tree = parser.expr()
        parser.expect("end")
        return cls(text, tree)

    def matches(self, case: Case) -> bool:
        return _evaluate(self.tree, case, names(case))

    def select(self, items: Iterable[T], case_of: Callable[[T], Case] = lambda c: c) -> list[T]:
        return [item for item in items if self.matches(case_of(item))]


def parse_optional(text: str | None) -> Selection | None:
    return None if text is None else Selection.parse(text)


def names(case: Case) -> tuple[str, ...]:
    """What a word is matched against: the words of the case's label and its variant, lower-cased."""
    return tuple(n.lower() for n in (*case.label().split(), case.variant))


# ------------------------------------------------------------------------------------ parsing


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, value, column) for '(' ')' 'and' 'or' 'not' words and the end."""
    out = []
    pos = 0
    while True:
        m = _TOKEN.match(text, pos)
        if m is None:  # only blanks are left
            out.append(("end", "", len(text) + 1))
            return out
        column = m.start(m.lastgroup) + 1
        if m.lastgroup == "bad":
            raise UsageError(f"-k {text!r}: unexpected character {m.group('bad')!r} at column {column}")
        value = m.group(m.lastgroup)
        kind = value if value in ("(", ")") or value in _KEYWORDS else "ident"
        out.append((kind, value, column))
        pos = m.end()


class _Parser:
    """Recursive descent over the tokens, as pytest's parser (one function per grammar rule)."""

    def __init__(self, text: str, tokens: list[tuple[str, str, int]]):
        self.text, self.tokens, self.i = text, tokens, 0

    def peek(self) -> str:
        return self.tokens[self.i][0]

    def take(self, kind: str) -> tuple[str, str, int] | None:
        if self.peek() == kind:
            self.i += 1
            return self.tokens[self.i - 1]
        return None

    def expect(self, *kinds: str) -> tuple[str, str, int]:
        for kind in kinds:
            token = self.take(kind)
            if token:
                return token
        _, value, column = self.tokens[self.i]
        wanted = " or ".join({"ident": "a name", "end": "the end"}.get(k, repr(k)) for k in kinds)
        got = repr(value) if value else "the end"
        raise UsageError(f"-k {self.text!r}: expected {wanted} at column {column}, got {got}")

    def expr(self) -> tuple:
        tree = self.and_expr()
        while self.take("or"):
            tree = ("or", tree, self.and_expr())
        return tree

    def and_expr(self) -> tuple:
        tree = self.not_expr()
        while self.take("and"):
            tree = ("and", tree, self.not_expr())
        return tree

    def not_expr(self) -> tuple:
        if self.take("not"):
            return ("not", self.not_expr())
        if self.take("("):
            tree = self.expr()
            self.expect(")")
            return tree
        _, value, _ = self.expect("not", "(", "ident")
        return _term(self.text, value)


def _term(text: str, word: str) -> tuple:
    key, eq, value = word.partition("=")
    if not eq:
        return ("word", word.lower())
    name = SHORT.get(key, key if key in FIELDS else None)
    if name is None:
        if key in VARIANT_KEYS:
            return ("field", "variant", word.lower())
        known = ", ".join([*SHORT, *FIELDS, *sorted(f"{k}=" for k in VARIANT_KEYS)])
        raise UsageError(f"-k {text!r}: {word!r} names no field of a case (fields: {known})")
    if not value:
        raise UsageError(f"-k {text!r}: {word!r} gives no value")
    if name in INT_FIELDS:
        try:
            return ("field", name, int(value))
        except ValueError:
            raise UsageError(f"-k {text!r}: {word!r} needs an integer") from None
    return ("field", name, value.lower())


def _evaluate(tree: tuple, case: Case, case_names: tuple[str, ...]) -> bool:
    op = tree[0]
    if op == "or":
        return _evaluate(tree[1], case, case_names) or _evaluate(tree[2], case, case_names)
    if op == "and":
        return _evaluate(tree[1], case, case_names) and _evaluate(tree[2], case, case_names)
    if op == "not":
        return not _evaluate(tree[1], case, case_names)
    if op == "word":
        return any(tree[1] in n for n in case_names)
    value = getattr(case, tree[1])
    return value == tree[2] if isinstance(value, int) else value.lower() == tree[2]
