"""The map of the whole model: the pipeline of Mask R-CNN with the tensor shapes of one real forward pass on it.

Built in notebooks/00_data.ipynb (the map every later notebook refers back to).

Shape glossary
    C        FPN channels (fpn_channels of the config)
    H', W'   the resized image;  H_l, W_l  the feature map of FPN level l;  A  anchors per location
    P        proposals of one image (RPN output)
    D        detections of one image
    K        object classes; K + 1 with the background
"""
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch


def trace_shapes(model, image: torch.Tensor) -> dict:
    """Run model([image]) once in inference mode and record the output shape of every stage with forward hooks.

    image: Tensor[3, H, W] in 0..1. Returns {"image", "batch", "features" {level: shape}, "anchors" [shape per
    level], "objectness" [(1, A, H_l, W_l) per level], "proposals", "box_rois", "box_features", "class_logits",
    "box_regression", "detections" (the boxes after NMS, resized frame), "mask_rois", "mask_features",
    "mask_logits", and the outputs "boxes", "labels", "scores", "masks"}, every shape a tuple. The model's training
    mode is restored afterwards.
    """
    shapes = {"image": tuple(image.shape)}

    def keep(name, of=lambda args, out: out):
        return lambda module, args, out: shapes.__setitem__(name, of(args, out))

    heads = model.roi_heads
    hooks = [
        model.backbone.register_forward_hook(keep("batch", lambda args, out: tuple(args[0].shape))),
        model.backbone.register_forward_hook(keep("features", lambda a, out: {k: tuple(f.shape)
                                                                               for k, f in out.items()})),
        model.rpn.anchor_generator.register_forward_hook(keep("anchors", lambda a, out: [tuple(x.shape) for x in out])),
        model.rpn.head.register_forward_hook(keep("objectness", lambda a, out: [tuple(x.shape) for x in out[0]])),
        model.rpn.register_forward_hook(keep("proposals", lambda a, out: tuple(out[0][0].shape))),
        heads.box_roi_pool.register_forward_hook(keep("box_rois", lambda a, out: tuple(out.shape))),
        heads.box_head.register_forward_hook(keep("box_features", lambda a, out: tuple(out.shape))),
        heads.box_predictor.register_forward_hook(keep("class_logits", lambda a, out: tuple(out[0].shape))),
        heads.box_predictor.register_forward_hook(keep("box_regression", lambda a, out: tuple(out[1].shape))),
        heads.mask_roi_pool.register_forward_hook(keep("detections", lambda args, out: tuple(args[1][0].shape))),
        heads.mask_roi_pool.register_forward_hook(keep("mask_rois", lambda a, out: tuple(out.shape))),
        heads.mask_head.register_forward_hook(keep("mask_features", lambda a, out: tuple(out.shape))),
        heads.mask_predictor.register_forward_hook(keep("mask_logits", lambda a, out: tuple(out.shape))),
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            result = model([image])[0]
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    shapes.update({key: tuple(result[key].shape) for key in ("boxes", "labels", "scores", "masks")})
    return shapes


def shape_text(shape) -> str:
    """(1, 64, 48, 48) -> "(1, 64, 48, 48)": how the map writes a shape (as Python prints a tuple)."""
    return str(tuple(shape))


def map_stages(shapes: dict) -> list[tuple[str, str, list[str]]]:
    """The map's boxes, in pipeline order: (stage title, notebook that builds it, lines "what  (shape)")."""
    s = {key: shape_text(value) for key, value in shapes.items() if isinstance(value, tuple)}
    anchors = sum(shape[0] for shape in shapes["anchors"])
    return [
        ("input image", "notebook 00", [f"image {s['image']}", "float, 0..1"]),
        ("transform: normalise,\nresize, pad", "notebook 00", [f"batch {s['batch']}"]),
        ("backbone (ResNet) + FPN", "notebook 04",
         [f"{name} {shape_text(shape)}" for name, shape in shapes["features"].items()]),
        ("RPN: anchors, objectness,\nbox deltas, NMS", "notebooks 01-03, 05",
         [f"anchors ({anchors}, 4)"]
         + [f"objectness p2 {shape_text(shapes['objectness'][0])}", "  ... one map per level",
            f"proposals {s['proposals']}"]),
        ("RoIAlign on P2-P5", "notebook 06", [f"box RoIs {s['box_rois']}", f"mask RoIs {s['mask_rois']}"]),
        ("box head: classes,\nrefined boxes, NMS", "notebooks 07 (03)",
         [f"features {s['box_features']}", f"class logits {s['class_logits']}",
          f"box deltas {s['box_regression']}", f"detections {s['detections']}"]),
        ("mask head", "notebook 08", [f"features {s['mask_features']}", f"mask logits {s['mask_logits']}"]),
        ("output per image", "notebook 10",
         [f"boxes {s['boxes']}", f"labels {s['labels']}", f"scores {s['scores']}", f"masks {s['masks']}"]),
    ]


def draw_model_map(shapes: dict, fig=None, title: str | None = None):
    """Draw the pipeline as two rows of four boxes with the shapes of `trace_shapes` written on them.

    Each box names its stage, the notebook that builds it, and the shapes its stage produced. Returns the figure.
    """
    fig = fig if fig is not None else Figure(figsize=(15, 7))
    ax = fig.add_axes((0, 0, 1, 0.93))
    ax.set(xlim=(0, 4), ylim=(0, 2.35))
    ax.set_axis_off()
    width, height = 0.84, 0.78
    corners = [(col + 0.08, 1.5) for col in range(4)] + [(col + 0.08, 0.32) for col in range(4)]
    colours = ["#dbe9f6", "#dbe9f6", "#e3f1dc", "#fde9d0", "#efe0f3", "#fbe0e0", "#fbe0e0", "#e8e8e8"]
    for (x, y), colour, (name, notebook, lines) in zip(corners, colours, map_stages(shapes)):
        ax.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0.02", fc=colour, ec="#555555"))
        ax.text(x + 0.03, y + height - 0.03, name, ha="left", va="top", fontsize=9.5, weight="bold")
        ax.text(x + width - 0.02, y + 0.02, notebook, ha="right", va="bottom", fontsize=8, color="#8a2be2")
        for k, line in enumerate(lines):
            ax.text(x + 0.04, y + height - 0.24 - 0.095 * k, line, ha="left", va="top", fontsize=8, family="monospace")
    arrow = {"arrowstyle": "-|>", "color": "#333333", "lw": 1.4}
    for k in (0, 1, 2, 4, 5, 6):  # left to right inside each row
        (x, y), (nx, _) = corners[k], corners[k + 1]
        ax.annotate("", xy=(nx - 0.01, y + height / 2), xytext=(x + width + 0.03, y + height / 2), arrowprops=arrow)
    (rx, ry), (ax4, ay4) = corners[3], corners[4]
    middle = (ry + ay4 + height) / 2  # the RPN's proposals go down, back to the left, and down into RoIAlign
    ax.plot([rx + width / 2, rx + width / 2, ax4 + width / 2], [ry - 0.03, middle, middle], color="#333333", lw=1.4)
    ax.annotate("", xy=(ax4 + width / 2, ay4 + height + 0.03), xytext=(ax4 + width / 2, middle), arrowprops=arrow)
    ax.text(rx + width / 2 - 0.05, middle + 0.02, "proposals (boxes)", ha="right", va="bottom", fontsize=8,
            style="italic")
    (bx, by) = corners[2]
    ax.annotate("", xy=(ax4 + width * 0.2, ay4 + height + 0.03), xytext=(bx + width * 0.2, by - 0.03),
                arrowprops={**arrow, "ls": "--", "color": "#2e7d32"})
    ax.text(bx + width * 0.2 + 0.03, by - 0.1, "feature maps", ha="left", fontsize=8, style="italic",
            color="#2e7d32")
    ax.text(0.08, 0.12, "training only: anchors and proposals labelled by IoU matching (02), the five losses (09), "
            "the training loop (11).  Every shape above was recorded from one forward pass.",
            fontsize=8.5, color="#444444")
    fig.suptitle(title or "Mask R-CNN: the pipeline and the shapes of one forward pass", fontsize=12)
    return fig
