"""Widget: drag a box over a feature grid and compare RoIPool's quantised bins with RoIAlign's sample points.

Built in notebooks/06_roialign_vs_roipool.ipynb. The callback `roi_view` is a plain function the tests call.
"""
import ipywidgets as widgets
import torch

from minimaskrcnn.viz.roi import draw_empty_box, draw_roi_sampling
from minimaskrcnn.widgets.common import show

# The explorer's initial state; notebook 06 draws it as a static picture with roi_view(**START).
START = dict(x1=1.3, y1=0.8, x2=6.1, y2=5.4, aligned=False, sampling_ratio=2, output_size=2)


def box_problem(x1, y1, x2, y2) -> str:
    """'' for a box with width and height > 0; otherwise a message naming the corner to move."""
    problems = [f"{b} = {vb:g} is not right of / below {a} = {va:g}"
                for a, va, b, vb in (("x1", x1, "x2", x2), ("y1", y1, "y2", y2)) if vb <= va]
    return "empty box: " + "; ".join(problems) if problems else ""


def roi_view(x1, y1, x2, y2, aligned=False, sampling_ratio=2, output_size=2, feature_size=(8, 8), fig=None):
    """Callback: draw the box (x1, y1, x2, y2) in feature pixels (spatial_scale 1) on a feature_size grid.

    An empty box (x2 <= x1 or y2 <= y1) draws the bare grids with box_problem's message instead. Returns the figure.
    """
    problem = box_problem(x1, y1, x2, y2)
    if problem:
        return draw_empty_box(feature_size, problem, fig=fig)
    box = torch.tensor([x1, y1, x2, y2], dtype=torch.float64)
    return draw_roi_sampling(box, feature_size, output_size, 1.0, sampling_ratio, aligned, fig=fig)


def roi_explorer(feature_size=(8, 8)):
    """Sliders for the box corners (feature pixels), the output size and sampling_ratio; a toggle for aligned.

    Starts at START. An empty box shows a message above the picture and a picture without bins or samples.
    """
    h, w = feature_size
    corner = dict(min=0, step=0.1, continuous_update=False)
    sliders = dict(
        x1=widgets.FloatSlider(START["x1"], max=w, description="x1 (left)", **corner),
        y1=widgets.FloatSlider(START["y1"], max=h, description="y1 (top)", **corner),
        x2=widgets.FloatSlider(START["x2"], max=w, description="x2 (right)", **corner),
        y2=widgets.FloatSlider(START["y2"], max=h, description="y2 (bottom)", **corner),
        aligned=widgets.Checkbox(START["aligned"], description="aligned"),
        sampling_ratio=widgets.IntSlider(START["sampling_ratio"], min=0, max=4, description="sampling"),
        output_size=widgets.IntSlider(START["output_size"], min=1, max=4, description="output"),
    )
    message = widgets.HTML("")
    out = widgets.Output()

    def redraw(_=None):
        values = {k: s.value for k, s in sliders.items()}
        problem = box_problem(values["x1"], values["y1"], values["x2"], values["y2"])
        message.value = f"<b style='color:#c00'>{problem}</b>" if problem else ""
        show(out, lambda: roi_view(**values, feature_size=feature_size))

    for s in sliders.values():
        s.observe(redraw, "value")
    redraw()
    names = list(sliders)
    return widgets.VBox([widgets.HBox([sliders[k] for k in names[:2]]), widgets.HBox([sliders[k] for k in names[2:4]]),
                         widgets.HBox([sliders[k] for k in names[4:]]), message, out])
