"""RoIPool and RoIAlign in pure PyTorch, and the multi-scale RoIAlign that picks an FPN level per RoI.

Built in notebooks/06_roialign_vs_roipool.ipynb.

Shape glossary
    N         images;  C channels;  H, W  feature map height and width
    R         RoIs (boxes) over the whole batch
    PH, PW    output bins per RoI (output_size)
    G         sampling points per bin side (sampling_ratio, or adaptive: at most the largest over the RoIs)
    S         sampled positions along one axis of a RoI (PH * G or PW * G)
Same signatures and semantics as torchvision.ops.roi_align / roi_pool: boxes are Tensor[R, 5] (batch index,
x1, y1, x2, y2) or a list of Tensor[L_i, 4] per image, in image coordinates scaled by spatial_scale.

The feature map is read through row gathers (index_select on a (N*H*W, C) view), so autograd keeps only
indices and weights for backward, never a copy of the features per RoI; RoIs are processed in chunks so the
transient gathered values stay bounded on large maps.
"""
import math

import torch
from torch import Tensor, nn

# upper bound on elements gathered at once (chunks of RoIs are sized to stay under it)
_CHUNK_ELEMENTS = 1 << 24


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _as_rois(boxes, like: Tensor) -> Tensor:
    """boxes: Tensor[R, 5] or list[Tensor[L_i, 4]] -> Tensor[R, 5] (batch index first) in like's dtype."""
    if isinstance(boxes, (list, tuple)):
        parts = [
            torch.cat((torch.full_like(b[:, :1], i, dtype=like.dtype), b.to(like.dtype)), dim=1)
            for i, b in enumerate(boxes)
        ]
        return torch.cat(parts) if parts else like.new_zeros((0, 5))
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes must be Tensor[K, 5] or a list of Tensor[L, 4], got shape {tuple(boxes.shape)}")
    return boxes.to(like.dtype)


def _chunks(num_rois: int, per_roi: int):
    step = max(1, _CHUNK_ELEMENTS // max(per_roi, 1))
    for start in range(0, num_rois, step):
        yield slice(start, min(start + step, num_rois))


def _bilinear_1d(coord: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """torchvision's 1-D bilinear rule for sample positions coord (any shape) on an axis of `size` pixels.

    Returns (low index, high index, low weight, high weight); samples outside [-1, size] get zero weights,
    positions below 0 are read at 0, positions at or past the last pixel read the last pixel.
    """
    valid = (coord >= -1.0) & (coord <= size)
    c = coord.clamp(min=0)
    low = c.floor().long()
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    high = torch.where(at_end, low, low + 1)
    c = torch.where(at_end, low.to(c.dtype), c)
    frac = c - low.to(c.dtype)
    return low, high, (1 - frac) * valid, frac * valid


def _sample_positions(start: Tensor, length: Tensor, bins: int, grid: Tensor, max_grid: int):
    """Sample positions along one axis: Tensor[R, bins*max_grid] and a mask of the real ones (< grid per RoI)."""
    bin_size = length / bins
    p = torch.arange(bins, dtype=start.dtype, device=start.device)
    i = torch.arange(max_grid, dtype=start.dtype, device=start.device)
    g = grid.clamp(min=1).to(start.dtype)
    pos = (
        start[:, None, None]
        + p[None, :, None] * bin_size[:, None, None]
        + (i[None, None, :] + 0.5) * (bin_size / g)[:, None, None]
    )  # (R, bins, G)
    real = (i[None, None, :] < grid[:, None, None]).expand_as(pos)
    return pos.reshape(len(start), -1), real.reshape(len(start), -1)  # (R, bins, G) -> (R, bins*G)


def roi_align(
    input: Tensor,
    boxes,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign: average of bilinear samples on a regular grid in each bin. -> Tensor[R, C, PH, PW].

    input: Tensor[N, C, H, W]; boxes: Tensor[R, 5] or list of Tensor[L, 4]; sampling_ratio <= 0 means
    ceil(roi size / output size) samples per bin side, per RoI; aligned=True shifts boxes by -0.5 pixel
    (pixel centres), aligned=False is the legacy definition where RoIs are at least 1x1.
    """
    rois = _as_rois(boxes, input)
    ph, pw = _pair(output_size)
    n, c, h, w = input.shape
    r = rois.shape[0]
    if r == 0:
        return input.new_zeros((0, c, ph, pw))
    offset = 0.5 if aligned else 0.0
    x1, y1 = rois[:, 1] * spatial_scale - offset, rois[:, 2] * spatial_scale - offset
    roi_w, roi_h = rois[:, 3] * spatial_scale - offset - x1, rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    if sampling_ratio > 0:
        grid_h = torch.full((r,), sampling_ratio, dtype=torch.int64, device=input.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / ph).long()
        grid_w = torch.ceil(roi_w / pw).long()
    gh, gw = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)
    ys, y_real = _sample_positions(y1, roi_h, ph, grid_h, gh)  # (R, PH*gh)
    xs, x_real = _sample_positions(x1, roi_w, pw, grid_w, gw)  # (R, PW*gw)
    y_lo, y_hi, wy_lo, wy_hi = _bilinear_1d(ys, h)
    x_lo, x_hi, wx_lo, wx_hi = _bilinear_1d(xs, w)
    count = (grid_h * grid_w).clamp(min=1).to(input.dtype)
    wy_lo, wy_hi = wy_lo * y_real, wy_hi * y_real
    wx_lo, wx_hi = wx_lo * x_real / count[:, None], wx_hi * x_real / count[:, None]

    table = input.permute(0, 2, 3, 1).reshape(n * h * w, c)  # (N, C, H, W) -> (N*H*W, C)
    base = rois[:, 0].long() * (h * w)
    out = []
    for sl in _chunks(r, ys.shape[1] * xs.shape[1] * c):
        acc = 0
        for yi, wy in ((y_lo[sl], wy_lo[sl]), (y_hi[sl], wy_hi[sl])):
            for xi, wx in ((x_lo[sl], wx_lo[sl]), (x_hi[sl], wx_hi[sl])):
                idx = base[sl, None, None] + yi[:, :, None] * w + xi[:, None, :]  # (r, Sy, Sx)
                vals = table.index_select(0, idx.reshape(-1)).reshape(*idx.shape, c)  # (r, Sy, Sx, C)
                acc = acc + vals * (wy[:, :, None] * wx[:, None, :])[..., None]
        acc = acc.reshape(acc.shape[0], ph, gh, pw, gw, c).sum(dim=(2, 4))  # (r, PH*gh, PW*gw, C) -> (r, PH, PW, C)
        out.append(acc.permute(0, 3, 1, 2))  # (r, PH, PW, C) -> (r, C, PH, PW)
    return torch.cat(out)


def _round_half_away(x: Tensor) -> Tensor:
    """C's round(): halves go away from zero (torch.round rounds halves to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _pool_bins(start: Tensor, length: Tensor, bins: int, size: int) -> tuple[Tensor, Tensor]:
    """Integer [begin, end) of each bin along one axis: Tensor[R, bins] each, clipped to [0, size]."""
    bin_size = length.to(torch.float64) / bins
    p = torch.arange(bins, dtype=torch.float64, device=start.device)
    begin = torch.floor(p[None] * bin_size[:, None]).long() + start[:, None]
    end = torch.ceil((p[None] + 1) * bin_size[:, None]).long() + start[:, None]
    return begin.clamp(0, size), end.clamp(0, size)


def roi_pool(input: Tensor, boxes, output_size, spatial_scale: float = 1.0) -> Tensor:
    """RoIPool: the box is rounded to the feature grid, split into integer bins, and each bin max-pooled.

    input: Tensor[N, C, H, W]; boxes: Tensor[R, 5] or list of Tensor[L, 4] -> Tensor[R, C, PH, PW].
    Empty bins give 0.
    """
    rois = _as_rois(boxes, input)
    ph, pw = _pair(output_size)
    n, c, h, w = input.shape
    r = rois.shape[0]
    if r == 0:
        return input.new_zeros((0, c, ph, pw))
    q = _round_half_away(rois[:, 1:] * spatial_scale).long()  # (R, 4) integer x1, y1, x2, y2
    roi_w = (q[:, 2] - q[:, 0] + 1).clamp(min=1)
    roi_h = (q[:, 3] - q[:, 1] + 1).clamp(min=1)
    y_begin, y_end = _pool_bins(q[:, 1], roi_h, ph, h)  # (R, PH)
    x_begin, x_end = _pool_bins(q[:, 0], roi_w, pw, w)  # (R, PW)
    by = max(int((y_end - y_begin).max()), 1)
    bx = max(int((x_end - x_begin).max()), 1)
    ys = y_begin[:, :, None] + torch.arange(by, device=input.device)  # (R, PH, by)
    xs = x_begin[:, :, None] + torch.arange(bx, device=input.device)  # (R, PW, bx)
    y_in, x_in = ys < y_end[:, :, None], xs < x_end[:, :, None]
    ys, xs = ys.clamp(max=h - 1), xs.clamp(max=w - 1)

    table = input.permute(0, 2, 3, 1).reshape(n * h * w, c)  # (N, C, H, W) -> (N*H*W, C)
    base = rois[:, 0].long() * (h * w)
    out = []
    for sl in _chunks(r, ph * by * pw * bx * c):
        idx = base[sl, None, None, None, None] + ys[sl, :, :, None, None] * w + xs[sl, None, None, :, :]
        vals = table.index_select(0, idx.reshape(-1)).reshape(*idx.shape, c)  # (r, PH, by, PW, bx, C)
        inside = (y_in[sl, :, :, None, None] & x_in[sl, None, None, :, :])[..., None]
        vals = vals.masked_fill(~inside, float("-inf"))
        vals = vals.permute(0, 1, 3, 2, 4, 5).flatten(3, 4)  # (r, PH, by, PW, bx, C) -> (r, PH, PW, by*bx, C)
        best = vals.max(dim=3).values  # (r, PH, PW, C)
        best = torch.where(torch.isinf(best), torch.zeros_like(best), best)  # empty bins
        out.append(best.permute(0, 3, 1, 2))  # (r, PH, PW, C) -> (r, C, PH, PW)
    return torch.cat(out)


def assign_levels(
    boxes: Tensor,
    k_min: int,
    k_max: int,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """FPN level of each RoI (eq. 1 of the FPN paper): floor(k0 + log2(sqrt(area) / 224) + eps), clamped.

    boxes: Tensor[R, 4] -> Tensor[R] int64, counted from k_min (0 = the finest level used).
    """
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    level = torch.floor(canonical_level + torch.log2(scale / canonical_scale) + eps)
    return (level.clamp(min=k_min, max=k_max) - k_min).to(torch.int64)


class MultiScaleRoIAlign(nn.Module):
    """Pool each RoI from the FPN level that matches its size (RoIAlign, or RoIPool with pool="pool").

    The scale of each level is inferred from the feature size against the largest image, rounded to a power of 2.
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int,
        sampling_ratio: int,
        aligned: bool = False,
        pool: str = "align",
        canonical_scale: float = 224,
        canonical_level: int = 4,
    ):
        super().__init__()
        if pool not in ("align", "pool"):
            raise ValueError(f"pool must be 'align' or 'pool', got {pool!r}")
        self.featmap_names = list(featmap_names)
        self.output_size = _pair(output_size)
        self.sampling_ratio, self.aligned, self.pool = sampling_ratio, aligned, pool
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level

    def _pool_one(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        if self.pool == "pool":
            return roi_pool(feature, rois, self.output_size, scale)
        return roi_align(feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned)

    def forward(self, features: dict, boxes: list[Tensor], image_sizes: list[tuple[int, int]]) -> Tensor:
        """features {name: Tensor[N, C, H_l, W_l]}, boxes [Tensor[R_i, 4]] -> Tensor[sum R_i, C, PH, PW]."""
        maps = [features[name] for name in self.featmap_names]
        max_h = max(s[0] for s in image_sizes)
        scales = [2.0 ** round(math.log2(f.shape[-2] / max_h)) for f in maps]
        rois = _as_rois(boxes, maps[0])
        if len(maps) == 1:
            return self._pool_one(maps[0], rois, scales[0])
        k_min, k_max = int(-math.log2(scales[0])), int(-math.log2(scales[-1]))
        levels = assign_levels(rois[:, 1:], k_min, k_max, self.canonical_scale, self.canonical_level)
        result = maps[0].new_zeros((len(rois), maps[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(maps, scales)):
            idx = torch.where(levels == level)[0]
            if len(idx):
                result[idx] = self._pool_one(feature, rois[idx], scale).to(result.dtype)
        return result
