"""A diagram of the Feature Pyramid Network's top-down path, labelled with the shapes of a real forward pass.

Built in notebooks/04_backbone_fpn.ipynb. Model code never imports this module.

Shape glossary
    C_l      channels of ResNet stage c_l;  F the FPN's channels (the same for every output level)
    H_l, W_l height and width of level l (stride 4 for c2 / p2 ... 64 for "pool")
A shape is given as (channels, height, width) of one image, e.g. (64, 48, 48).
"""
from matplotlib.patches import Circle, FancyArrowPatch, Rectangle

STAGE, OUTPUT, EXTRA, TOP_DOWN = "#9ecae1", "#a1d99b", "#dadaeb", "#b15928"
WIDTH, HEIGHT, ROW, SUM_X, OUT_X = 1.5, 0.62, 1.1, 2.5, 4.3  # box size, row spacing, column x positions


def _node(ax, x: float, y: float, name: str, shape, colour: str):
    c, h, w = shape
    ax.add_patch(Rectangle((x - WIDTH / 2, y - HEIGHT / 2), WIDTH, HEIGHT, facecolor=colour, edgecolor="black",
                           lw=0.8))
    return ax.text(x, y, f"{name}\n{c} × {h} × {w}", ha="center", va="center", fontsize=7.5)


def _arrow(ax, start, end, label: str, offset, colour: str = "black"):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9, lw=0.9, color=colour))
    middle = ((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1])
    return ax.text(*middle, label, ha="center", va="center", fontsize=6.5, color=colour)


def draw_fpn(ax, stage_shapes: dict, level_shapes: dict, extra_level: str = "pool") -> dict:
    """Draw the FPN: ResNet stages (left, finest at the bottom), a 1x1 lateral conv from each into the top-down
    path (middle: from the coarsest level down, the merged map is nearest-upsampled to the next lateral's size and
    added to it, "+"), a 3x3 output conv from each sum (right), and the extra level: max-pool kernel 1 stride 2 of
    the coarsest output.

    stage_shapes: {"c2": (C_2, H_2, W_2), ...} finest first; level_shapes: {"p2": (F, H_2, W_2), ..., extra_level:
    (F, H, W)}: one output per stage plus the extra level. Returns {name: Text artist} for every box (stage and
    level names) and every upsampling arrow ("up p3", the arrow from level p3 down), so a caller can check what
    the picture says.
    """
    stages, levels = list(stage_shapes.items()), list(level_shapes.items())
    if extra_level not in level_shapes or len(levels) != len(stages) + 1:
        raise ValueError(f"draw_fpn: expected one output per stage ({[n for n, _ in stages]}) plus {extra_level!r}, "
                         f"got {list(level_shapes)}")
    outputs = [(n, s) for n, s in levels if n != extra_level]
    for (stage, (_, h, w)), (level, (_, lh, lw)) in zip(stages, outputs):
        if (h, w) != (lh, lw):
            raise ValueError(f"draw_fpn: {level} is {lh} x {lw} but its stage {stage} is {h} x {w}; "
                             "an FPN output keeps its stage's size")
    texts, radius = {}, 0.13
    for i, ((stage, shape), (level, out_shape)) in enumerate(zip(stages, outputs)):
        y = i * ROW
        texts[stage] = _node(ax, 0, y, stage, shape, STAGE)
        texts[level] = _node(ax, OUT_X, y, level, out_shape, OUTPUT)
        coarsest = i == len(stages) - 1  # the coarsest merged map is its lateral alone: nothing to add
        ax.add_patch(Circle((SUM_X, y), radius, facecolor="white", edgecolor="black", lw=0.8))
        ax.text(SUM_X, y, "" if coarsest else "+", ha="center", va="center", fontsize=8)
        _arrow(ax, (WIDTH / 2, y), (SUM_X - radius, y), f"1×1 conv {shape[0]}→{out_shape[0]}", (0, 0.13))
        _arrow(ax, (SUM_X + radius, y), (OUT_X - WIDTH / 2, y), "3×3 conv", (0, 0.13))
    for i in range(1, len(outputs)):  # each merged map comes down into the sum of the next finer level
        (_, (_, h, w)), (coarse, (_, ch, cw)) = outputs[i - 1], outputs[i]
        y = (i - 1) * ROW
        texts[f"up {coarse}"] = _arrow(ax, (SUM_X, y + ROW - radius), (SUM_X, y + radius),
                                       f"nearest ↑ {ch}×{cw} → {h}×{w}", (0.62, 0), TOP_DOWN)
    top = (len(stages) - 1) * ROW
    texts[extra_level] = _node(ax, OUT_X, top + ROW, extra_level, level_shapes[extra_level], EXTRA)
    _arrow(ax, (OUT_X, top + HEIGHT / 2), (OUT_X, top + ROW - HEIGHT / 2), "max-pool\nk 1, s 2", (-0.45, 0))
    ax.text(0, top + ROW, "ResNet stages", ha="center", va="center", fontsize=8, weight="bold")
    ax.text(SUM_X, top + ROW, "top-down path", ha="center", va="center", fontsize=8, weight="bold")
    ax.set_xlim(-WIDTH / 2 - 0.1, OUT_X + WIDTH / 2 + 0.1)
    ax.set_ylim(-HEIGHT / 2 - 0.1, top + ROW + HEIGHT / 2 + 0.1)
    ax.set_aspect("equal")
    ax.set_axis_off()
    return texts
