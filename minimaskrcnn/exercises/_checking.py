"""The machinery behind `check`: run a learner's function case by case, compare, and explain the first difference.

Shape glossary: none of its own; the cases carry the shapes of the exercise they test (see _catalog).
"""
import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor


@dataclass
class Case:
    """One call of an exercise: a label saying what it tests, and the arguments by name, in signature order."""

    label: str
    args: dict


@dataclass
class Exercise:
    """An exercise: where it is taught, the package function it mirrors, what to do, and how it is checked.

    cases() -> [Case]: hand-made, edge and random cases (built when checked). mistakes: (name, wrong version)
    pairs with the exercise's signature; a wrong answer that gives the same output as one of them is named after it.
    invoke(fn, args) calls a function (or, for a class, builds and calls it) with a case's arguments.
    """

    notebook: str
    reference: Callable
    statement: str
    hint: str
    cases: Callable[[], list] = field(repr=False)
    mistakes: list = field(default_factory=list, repr=False)
    invoke: Callable = field(default=lambda fn, args: fn(*args.values()), repr=False)


class _Stub(Exception):
    """The learner's function has not been written yet."""


def _tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for comparing results of this dtype."""
    return (1e-9, 1e-9) if dtype == torch.float64 else (1e-4, 1e-4)


def compare(expected, got) -> tuple[bool, str]:
    """(agree, why not): nested tensors / lists / tuples / numbers compared by type, shape, dtype and value."""
    if isinstance(expected, Tensor):
        if not isinstance(got, Tensor):
            return False, f"returned a {type(got).__name__}, expected a Tensor"
        if got.shape != expected.shape:
            return False, f"shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        if got.dtype != expected.dtype:
            return False, f"dtype {got.dtype}, expected {expected.dtype}"
        if expected.numel() == 0:
            return True, ""
        if not expected.is_floating_point():
            wrong = int((got != expected).sum())
            return wrong == 0, f"{wrong} of {expected.numel()} entries differ"
        rtol, atol = _tolerance(expected.dtype)
        close = torch.isclose(got.detach(), expected.detach(), rtol=rtol, atol=atol, equal_nan=True)
        if bool(close.all()):
            return True, ""
        diff = (got.detach() - expected.detach()).abs().nan_to_num(nan=float("inf"))
        where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        at = f" at index {where}" if where else ""
        return False, (f"max difference {float(diff.max()):.4g}{at}: expected {float(expected[where]):.6g}, "
                       f"got {float(got[where]):.6g}")
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            return False, f"returned a {type(got).__name__}, expected a {type(expected).__name__}"
        if len(got) != len(expected):
            return False, f"{len(got)} items, expected {len(expected)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            agree, why = compare(e, g)
            if not agree:  # the path to the differing part: "[0][1]: shape ..."
                return False, f"[{i}]{why}" if why.startswith("[") else f"[{i}]: {why}"
        return True, ""
    if isinstance(expected, float):
        try:
            value = float(got)
        except (TypeError, ValueError):
            return False, f"returned a {type(got).__name__}, expected a number"
        both_nan = math.isnan(value) and math.isnan(expected)
        agree = both_nan or math.isclose(value, expected, rel_tol=1e-5, abs_tol=1e-6)
        return agree, f"difference {abs(value - expected):.4g}"
    return got == expected, "values differ"


def _rounded(values):
    """Nested lists of numbers with floats rounded to 4 decimals (for printing)."""
    if isinstance(values, list):
        return [_rounded(v) for v in values]
    return round(values, 4) if isinstance(values, float) else values


def show(value, limit: int = 160) -> str:
    """A short one-line picture of an argument or result."""
    if isinstance(value, Tensor):
        if value.numel() <= 16 and value.numel() > 0:
            text = f"tensor({_rounded(value.detach().tolist())}, {str(value.dtype).replace('torch.', '')})"
        else:
            text = f"Tensor{list(value.shape)} {str(value.dtype).replace('torch.', '')}"
    elif isinstance(value, (list, tuple)):
        inner = ", ".join(show(v, limit) for v in value[:4]) + (", ..." if len(value) > 4 else "")
        text = f"[{inner}]" if isinstance(value, list) else f"({inner})"
    elif callable(value):
        text = getattr(value, "__name__", type(value).__name__)
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _call(exercise: Exercise, fn, args: dict):
    """fn's answer on a copy of args (a learner's function may modify its inputs); raises _Stub for a stub."""
    try:
        out = exercise.invoke(fn, copy.deepcopy(args))
    except NotImplementedError as error:
        raise _Stub from error
    if out is None or out is Ellipsis:
        raise _Stub
    return out


def _output(exercise: Exercise, fn, args: dict):
    """fn's output on args, or None when it fails (a wrong version may fail on some cases)."""
    try:
        return exercise.invoke(fn, copy.deepcopy(args))
    except Exception:
        return None


def _looks_like(exercise: Exercise, fn, cases: list, failing: Case, expected, got) -> str | None:
    """The names of the known mistakes that explain the learner's answer, or None.

    A mistake explains the failing case when its output there equals the learner's (and differs from the
    expected one). When several do, the ones that also agree with the learner's fn on the most cases win.
    """
    candidates = []
    for name, wrong in exercise.mistakes:
        out = _output(exercise, wrong, failing.args)
        if out is not None and not compare(expected, out)[0] and compare(out, got)[0]:
            candidates.append((name, wrong))
    if len(candidates) > 1:
        answers = [_output(exercise, fn, case.args) for case in cases]
        score = {}
        for name, wrong in candidates:
            score[name] = 0
            for case, answer in zip(cases, answers):
                out = _output(exercise, wrong, case.args)
                if out is not None and answer is not None and compare(out, answer)[0]:
                    score[name] += 1
        best = max(score.values())
        candidates = [(name, wrong) for name, wrong in candidates if score[name] == best]
    return ", or ".join(name for name, _ in candidates) or None


def run_check(name: str, exercise: Exercise, fn) -> bool:
    """check(name, fn): see minimaskrcnn.exercises.check."""
    not_attempted = f"{name}: not attempted yet. Hint: {exercise.hint}"
    if fn is None or fn is Ellipsis:
        print(not_attempted)
        return False
    cases = exercise.cases()
    for i, case in enumerate(cases):
        expected = exercise.invoke(exercise.reference, copy.deepcopy(case.args))
        inputs = ", ".join(f"{k}={show(v)}" for k, v in case.args.items())
        try:
            got = _call(exercise, fn, case.args)
        except _Stub:
            print(not_attempted if i == 0 else f"{name}: returned None or raised NotImplementedError on case "
                                               f"'{case.label}'\n  inputs: {inputs}")
            return False
        except Exception as error:  # the learner's own bug: a message, never a traceback
            print(f"{name}: your function raised {type(error).__name__}: {str(error)[:200]}\n"
                  f"  case: {case.label}\n  inputs: {inputs}")
            return False
        agree, why = compare(expected, got)
        if not agree:
            why = f"result{why}" if why.startswith("[") else why
            lines = [f"{name}: case '{case.label}' differs ({why}).", f"  inputs:   {inputs}",
                     f"  expected: {show(expected)}", f"  got:      {show(got)}"]
            mistake = _looks_like(exercise, fn, cases, case, expected, got)
            if mistake:
                lines.append(f"  looks like: {mistake}")
            print("\n".join(lines))
            return False
    reference = f"{exercise.reference.__module__}.{exercise.reference.__qualname__}"
    print(f"{name}: all {len(cases)} cases agree with {reference}. Well done!")
    return True
