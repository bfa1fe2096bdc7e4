"""Widget: drag a box over a feature grid and compare RoIPool's quantised bins with RoIAlign's sample points.

Built in notebooks/06_roialign_vs_roipool.ipynb. The callback `roi_view` is a plain function the tests call.
"""
import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from minimaskrcnn.viz.roi import draw_roi_sampling


def roi_view(x1, y1, x2, y2, aligned=False, sampling_ratio=2, output_size=2, feature_size=(8, 8), fig=None):
    """Callback: draw the box (x1, y1, x2, y2) in feature pixels (spatial_scale 1) on a feature_size grid."""
    if x2 < x1 or y2 < y1:
        raise ValueError(f"roi_view: box ({x1}, {y1}, {x2}, {y2}) has x2 < x1 or y2 < y1")
    box = torch.tensor([x1, y1, x2, y2], dtype=torch.float64)
    return draw_roi_sampling(box, feature_size, output_size, 1.0, sampling_ratio, aligned, fig=fig)


def roi_explorer(feature_size=(8, 8)):
    """Sliders for the box corners, the output size and sampling_ratio; a toggle for aligned."""
    h, w = feature_size
    sliders = dict(
        x1=widgets.FloatSlider(1.3, min=0, max=w, step=0.1), y1=widgets.FloatSlider(0.8, min=0, max=h, step=0.1),
        x2=widgets.FloatSlider(6.1, min=0, max=w, step=0.1), y2=widgets.FloatSlider(5.4, min=0, max=h, step=0.1),
        aligned=widgets.Checkbox(False, description="aligned"),
        sampling_ratio=widgets.IntSlider(2, min=0, max=4, description="sampling"),
        output_size=widgets.IntSlider(2, min=1, max=4, description="output"),
    )
    out = widgets.Output()

    def redraw(_=None):
        with out:
            out.clear_output(wait=True)
            values = {k: s.value for k, s in sliders.items()}
            if values["x2"] >= values["x1"] and values["y2"] >= values["y1"]:
                roi_view(**values, feature_size=feature_size)
                plt.show()

    for s in sliders.values():
        s.observe(redraw, "value")
    redraw()
    return widgets.VBox([widgets.HBox(list(sliders.values())[:4]), widgets.HBox(list(sliders.values())[4:]), out])
