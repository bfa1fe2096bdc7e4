"""Anchors: the reference boxes the RPN scores and refines, tiled over every feature level.

Built in notebooks/01_anchors.ipynb.

Shape glossary
    A        anchors per location (len(sizes) * len(aspect_ratios) for a level)
    H_l, W_l height and width of feature level l
Order (as torchvision): location-major, row by row, then the A anchors of each location.
"""
import torch
from torch import Tensor, nn

from minimaskrcnn.boxes import box_iou


def cell_anchors(sizes: tuple[float, ...], aspect_ratios: tuple[float, ...]) -> Tensor:
    """The A anchors centred on (0, 0): Tensor[A, 4], ratio-major then size; A = len(aspect_ratios) * len(sizes).

    An aspect ratio r = h / w keeps the area size**2: h = size * sqrt(r), w = size / sqrt(r). Corners are
    rounded to integers as in the reference implementation.
    """
    sizes_t = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * sizes_t[None, :]).reshape(-1)  # (ratios, sizes) -> (A,)
    hs = (h_ratios[:, None] * sizes_t[None, :]).reshape(-1)
    return (torch.stack((-ws, -hs, ws, hs), dim=1) / 2).round()


def grid_anchors(cell: Tensor, feature_size: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Tile cell: Tensor[A, 4] over a feature map of feature_size (H_l, W_l) -> Tensor[H_l*W_l*A, 4].

    Location (i, j) of the map is the image point (j * stride_x, i * stride_y); stride is (stride_y, stride_x).
    """
    (height, width), (stride_y, stride_x) = feature_size, stride
    shifts_x = torch.arange(width, dtype=torch.float32, device=cell.device) * stride_x
    shifts_y = torch.arange(height, dtype=torch.float32, device=cell.device) * stride_y
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")  # (H_l, W_l) each
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)  # (H_l*W_l, 1, 4)
    return (shifts + cell[None]).reshape(-1, 4)  # (H_l*W_l, A, 4) -> (H_l*W_l*A, 4)


class AnchorGenerator(nn.Module):
    """Anchors for every feature level of a padded image batch.

    sizes[l] and aspect_ratios[l] are the anchor sizes (pixels) and ratios (h / w) of level l. The stride of a
    level is batch_shape // feature_size per dimension, so it follows the backbone without being configured.
    """

    def __init__(self, sizes: tuple[tuple[float, ...], ...], aspect_ratios: tuple[tuple[float, ...], ...]):
        super().__init__()
        if len(sizes) != len(aspect_ratios):
            raise ValueError(f"one entry per level: {len(sizes)} sizes but {len(aspect_ratios)} aspect_ratios")
        self.cells = [cell_anchors(s, r) for s, r in zip(sizes, aspect_ratios)]  # float32, on the CPU
        # device -> the cells copied there, once: a copy from the CPU to a GPU makes the host wait for the GPU.
        # (A cache, not buffers: model.half() would round buffers, and anchors stay float32.)
        self._cells_on: dict[torch.device, list[Tensor]] = {}

    def num_anchors_per_location(self) -> list[int]:
        return [len(c) for c in self.cells]

    def forward(
        self, batch_shape: tuple[int, int], feature_sizes: list[tuple[int, int]], device=None
    ) -> list[Tensor]:
        """batch_shape (H, W) of the padded batch, feature_sizes [(H_l, W_l)] -> [Tensor[H_l*W_l*A, 4]] per level.

        Every image of a padded batch shares these anchors.
        """
        if len(feature_sizes) != len(self.cells):
            raise ValueError(f"{len(feature_sizes)} feature levels but anchors are configured for {len(self.cells)}")
        device = torch.device(device or "cpu")
        if device not in self._cells_on:
            self._cells_on[device] = [cell.to(device) for cell in self.cells]
        anchors = []
        for cell, (h, w) in zip(self._cells_on[device], feature_sizes):
            stride = (batch_shape[0] // h, batch_shape[1] // w)
            anchors.append(grid_anchors(cell, (h, w), stride))
        return anchors


def best_anchor_iou(boxes: Tensor, anchors: Tensor, chunk: int = 4096) -> Tensor:
    """Anchor coverage: for each box of boxes: Tensor[G, 4] the best IoU any of anchors: Tensor[P, 4] reaches -> Tensor[G].

    A ground-truth box whose best IoU stays below the RPN's positive threshold (0.7) only gets a positive anchor
    through the Matcher's low-quality matches. Anchors are taken `chunk` at a time, so memory stays O(G * chunk).
    Built in notebooks/01_anchors.ipynb.
    """
    best = torch.zeros(len(boxes), dtype=boxes.dtype, device=boxes.device)
    if len(boxes) == 0:
        return best
    for start in range(0, len(anchors), chunk):
        best = torch.maximum(best, box_iou(boxes, anchors[start : start + chunk].to(boxes)).max(dim=1).values)
    return best
