"""Exercises: write a piece of Mask R-CNN yourself and check it against the package.

Each notebook's "Your turn" sections give a stub with the signature of a package function; `check(name, fn)` runs
your function on hand-made, edge and random cases against the package's own function and prints a short diagnosis.

    from minimaskrcnn.exercises import EXERCISES, check

    def box_iou(boxes1, boxes2):
        raise NotImplementedError  # your code here

    check("box_iou", box_iou)   # "box_iou: not attempted yet. Hint: ..." until you write it

`stub(name)` gives the source of that starting point. Reference solutions, written as a learner would (loops
allowed): minimaskrcnn.exercises.solutions.

Shape glossary
    N, M   numbers of boxes (or images, for feature maps Tensor[N, C, H, W])
    G, P   ground-truth boxes and predictions of one image
    A      anchors per location;  T  anchors of all levels of one image
    R      RoIs;  K  object classes (K + 1 with the background)
    D      detections, or points of a precision-recall curve
Each exercise's statement gives the exact shapes of its arguments and result.
"""
import inspect
import textwrap

from minimaskrcnn.exercises._catalog import EXERCISES
from minimaskrcnn.exercises._checking import Exercise, run_check

__all__ = ["EXERCISES", "Exercise", "check", "stub"]


def check(name: str, fn) -> bool:
    """Run your `fn` for exercise `name` on every case and compare with the package; True when all agree.

    Prints one line on success; otherwise the first failing case (inputs, expected, got, the difference) and,
    when the answer matches a typical mistake, its name. An untouched stub (raises NotImplementedError or returns
    None) prints "not attempted yet" with a hint; an exception in `fn` is reported as a message, not a traceback.
    Names: EXERCISES' keys. Used by the "Your turn" sections of notebooks 01 to 11.
    """
    if name not in EXERCISES:
        print(f"check: no exercise called {name!r}; the exercises are {', '.join(EXERCISES)}")
        return False
    return run_check(name, EXERCISES[name], fn)


def _plain_signature(fn, drop_self: bool = False, indent: int = 0) -> str:
    """fn's parameters with their defaults, without annotations: "(boxes1, boxes2)", wrapped between parameters
    (continuation lines indented by `indent`) so that no line passes 120 characters."""
    params = [p.replace(annotation=inspect.Parameter.empty) for p in inspect.signature(fn).parameters.values()]
    lines = [""]
    for text in (str(p) for p in params[1 if drop_self else 0:]):
        if lines[-1] and indent + len(lines[-1]) + len(text) + 4 > 120:
            lines.append("")
        lines[-1] += (", " if lines[-1] else "") + text
    return "(" + (",\n" + " " * indent).join(lines) + ")"


def stub(name: str) -> str:
    """The source of the learner's starting point for exercise `name`: the signature, the statement as docstring,
    and a body that raises NotImplementedError (which `check` reports as "not attempted yet").

    For the "Your turn" cells of the notebooks; Matcher, a class, gets a class stub.
    """
    exercise = EXERCISES[name]
    doc = textwrap.fill(exercise.statement, 112, initial_indent="    ", subsequent_indent="    ").strip()
    if inspect.isclass(exercise.reference):
        init = _plain_signature(exercise.reference.__init__, drop_self=True)[1:]
        call = _plain_signature(exercise.reference.__call__, drop_self=True)[1:]
        return (f'class {name}:\n    """{doc}"""\n\n    def __init__(self, {init}:\n'
                f'        pass  # keep the settings on self for __call__\n\n    def __call__(self, {call}:\n'
                f'        raise NotImplementedError  # your code here\n')
    head = f"def {name}{_plain_signature(exercise.reference, indent=len(name) + 5)}:"
    return f'{head}\n    """{doc}"""\n    raise NotImplementedError  # your code here\n'
