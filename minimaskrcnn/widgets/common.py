"""What every explorer shares: the figure a callback draws into, and how an explorer redraws it.

A callback (`*_view`) draws into `figure(fig, size)`: the figure a test passes, or a new pyplot figure in a notebook.
An explorer wires its controls to a `redraw` that calls `show(out, lambda: view(...))`.
"""
import matplotlib.pyplot as plt


def figure(fig=None, size: tuple[float, float] = (6.0, 4.0)):
    """`fig` cleared for a fresh drawing, or a new pyplot figure of `size` inches when None."""
    fig = fig if fig is not None else plt.figure(figsize=size)
    fig.clear()
    return fig


def show(out, draw) -> None:
    """Replace what the ipywidgets Output `out` shows with what draw() draws (the redraw of every explorer)."""
    with out:
        out.clear_output(wait=True)
        draw()
        plt.show()
