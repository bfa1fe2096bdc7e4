"""Exercises: write a piece of Mask R-CNN yourself and check it against the package.

Each notebook's "Your turn" sections give a stub with the signature of a package function; `check(name, fn)` runs
your function on hand-made, edge and random cases against the package's own function and prints a short diagnosis.

    from minimaskrcnn.exercises import EXERCISES, check

    def box_iou(boxes1, boxes2):
        raise NotImplementedError  # your code here

    check("box_iou", box_iou)   # "box_iou: not attempted yet. Hint: ..." until you write it

Reference solutions, written as a learner would (loops allowed): minimaskrcnn.exercises.solutions.

Shape glossary
    N, M   numbers of boxes (or images, for feature maps Tensor[N, C, H, W])
    G, P   ground-truth boxes and predictions of one image
    A      anchors per location;  T  anchors of all levels of one image
    R      RoIs;  K  object classes (K + 1 with the background)
    D      detections, or points of a precision-recall curve
Each exercise's statement gives the exact shapes of its arguments and result.
"""
from minimaskrcnn.exercises._catalog import EXERCISES
from minimaskrcnn.exercises._checking import Exercise, run_check

__all__ = ["EXERCISES", "Exercise", "check"]


def check(name: str, fn) -> bool:
    """Run your `fn` for exercise `name` on every case and compare with the package; True when all agree.

    Prints one line on success; otherwise the first failing case (inputs, expected, got, the difference) and,
    when the answer matches a typical mistake, its name. An untouched stub (raises NotImplementedError or returns
    None) prints "not attempted yet" with a hint; an exception in `fn` is reported as a message, not a traceback.
    Names: EXERCISES' keys (each notebook's "Your turn" sections use them).
    """
    if name not in EXERCISES:
        print(f"check: no exercise called {name!r}; the exercises are {', '.join(EXERCISES)}")
        return False
    return run_check(name, EXERCISES[name], fn)
