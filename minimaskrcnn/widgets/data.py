"""Dataset browser: a slider over the dataset's indices (0-based positions) and toggles for boxes, masks, labels.

Built in notebooks/00_data.ipynb. The callback `sample_view` is a plain function the tests call.
"""
import ipywidgets as widgets

from minimaskrcnn.viz.data import draw_instances
from minimaskrcnn.widgets.common import figure, show


def sample_view(dataset, index: int = 0, show_boxes: bool = True, show_masks: bool = True, show_labels: bool = True,
                fig=None):
    """Callback of the browser: draw item `index` of `dataset` (image, target) into `fig` (a new one when None).

    Returns the figure; its title gives the dataset index (what the browser's slider holds), the COCO image id
    (which need not equal it: ids start at 1 in our shapes files) and the number of instances.
    """
    if not 0 <= index < len(dataset):
        raise ValueError(f"sample_view: index {index} outside 0..{len(dataset) - 1}")
    image, target = dataset[index]
    ax = figure(fig, (4.5, 4.5)).add_subplot()
    draw_instances(ax, image, target["boxes"], target["labels"], masks=target["masks"],
                   class_names=getattr(dataset, "class_names", None), show_boxes=show_boxes,
                   show_masks=show_masks, show_labels=show_labels,
                   title=f"index {index} (image id {target['image_id']}): {len(target['labels'])} instance(s)")
    return ax.figure


def dataset_browser(dataset):
    """Slider over the items of `dataset` (dataset[index], 0-based) with checkboxes for boxes, masks and labels."""
    index = widgets.IntSlider(0, 0, len(dataset) - 1, description="index")
    toggles = {name: widgets.Checkbox(True, description=name, indent=False) for name in ("boxes", "masks", "labels")}
    out = widgets.Output()

    def redraw(_=None):
        show(out, lambda: sample_view(dataset, index.value, toggles["boxes"].value, toggles["masks"].value,
                                      toggles["labels"].value))

    for control in (index, *toggles.values()):
        control.observe(redraw, "value")
    redraw()
    return widgets.VBox([widgets.HBox([index, *toggles.values()]), out])
