"""Training widgets: a live loss plot fed by engine.train, and a predictions-vs-ground-truth browser.

Built in notebooks/11_train_on_gpu.ipynb. Each widget's callback is a plain function the tests call.
"""
import ipywidgets as widgets
from IPython.display import display

from minimaskrcnn.viz.train import plot_history, plot_prediction_vs_truth
from minimaskrcnn.widgets.common import figure, show


def prediction_view(images, predictions, targets, class_names, index: int = 0, score_threshold: float = 0.5, fig=None):
    """Callback of the browser: ground truth and prediction of image `index`, detections >= score_threshold."""
    if not 0 <= index < len(images):
        raise ValueError(f"prediction_view: index {index} outside 0..{len(images) - 1}")
    return plot_prediction_vs_truth(images[index], predictions[index], targets[index], class_names,
                                    score_threshold, fig=fig)


def prediction_browser(images, predictions, targets, class_names, score_threshold: float = 0.5):
    """Image slider + score-threshold slider (starting at score_threshold) over predictions and ground truth of a
    few validation images."""
    index = widgets.IntSlider(0, 0, len(images) - 1, description="image")
    threshold = widgets.FloatSlider(score_threshold, min=0.05, max=0.95, step=0.05, description="score >=")
    out = widgets.Output()

    def redraw(_=None):
        show(out, lambda: prediction_view(images, predictions, targets, class_names, index.value, threshold.value,
                                          fig=figure(size=(8, 4))))

    index.observe(redraw, "value")
    threshold.observe(redraw, "value")
    redraw()
    return widgets.VBox([widgets.HBox([index, threshold]), out])


class LiveHistory:
    """engine.train(on_log=live) target: keeps the records and redraws the loss curves every `every` records.

    `update(record)` is the plain callback; `widget` is the Output the figure is drawn into.
    """

    def __init__(self, every: int = 5):
        self.records, self.every, self.widget = [], every, widgets.Output()

    def update(self, record: dict):
        self.records.append(record)
        if len(self.records) % self.every == 0 or "eval" in record:
            self.draw()

    __call__ = update

    def draw(self):
        show(self.widget, lambda: plot_history(self.records, fig=figure(size=(10, 3.6))))

    def show(self):
        display(self.widget)
        return self
