"""RoIPool and RoIAlign: cutting a fixed-size feature patch out of a feature map for every region of interest.

Built in notebooks/06_roialign_vs_roipool.ipynb.

Shape glossary
    N          images in the batch
    C          channels of the feature map
    H, W       feature map height and width
    R          RoIs (regions of interest) over the whole batch
    ph, pw     output size (pooled height and width), e.g. 7 x 7 (box head) or 14 x 14 (mask head)
    G          samples per bin along one axis (sampling_ratio, or adaptive ceil(roi size / output size))
    T          taps of one bin: the 4 G^2 (pixel, weight) pairs its samples read
    P          rows of the pixel table: N*H*W for one map, sum over levels of N*H_l*W_l for the multi-scale pooler
Boxes are absolute (x1, y1, x2, y2) floats in image coordinates; `spatial_scale` maps them onto the feature map.

Same signatures and semantics as torchvision.ops.roi_pool / roi_align, so one can swap for the other.

How RoIAlign is computed here. Every output bin is a fixed weighted sum of feature pixels: G x G bilinear samples,
each reading its 4 neighbouring pixels, averaged. Bilinear weights are separable, so a bin's (pixel, weight) pairs --
its "taps", T = 4 G^2 of them -- are every pair of one of its 2G row taps and one of its 2G column taps (weight = row
weight x column weight; a sample whose y or x falls outside the map weighs 0, as in the reference's border rules).
With the features laid out channels-last as a table of N*H*W pixel rows of C values, the forward pass is one weighted
gather-sum per bin over that table (`F.embedding_bag`, vectorised over channels):

    out[r, bin, :] = sum_t weight[r, bin, t] * features[pixel[r, bin, t], :]

and the backward pass is its transpose: the same taps grouped by pixel (a sort), each pixel summing weight x the
gradient of the bins it fed -- again a weighted gather-sum, with no scattered atomic adds. This is exactly the work of
torchvision's kernel (4 corners x G^2 samples per bin and channel), done by vectorised library code. Memory: the taps
hold R x ph x pw x 4 G^2 indices and weights (no channel factor), built for chunks of RoIs that fit _CHUNK_TAPS and
rebuilt in the backward pass instead of being kept. MultiScaleRoIPooler puts every FPN level into one such table, so
the RoIs of all levels are pooled in one pass, each reading its own level (RoIPool reads the same table).
"""
import itertools
import math
from typing import NamedTuple, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minimaskrcnn.boxes import box_area

BoxesArg = Union[Tensor, Sequence[Tensor]]

# Largest number of taps (pixel index + weight) one chunk of RoIs builds at once for RoIAlign (about 100 MiB).
_CHUNK_TAPS = 8 * 2**20
# Largest number of floats a chunk of RoIPool's gathered bins may hold (64 MiB in float32).
_CHUNK_FLOATS = 16 * 2**20


def _pair(output_size) -> tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    if isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        return int(output_size[0]), int(output_size[1])
    raise TypeError(f"output_size must be an int or a pair of ints, got {output_size!r}")


def convert_boxes_to_rois(boxes: BoxesArg, like: Tensor) -> Tensor:
    """boxes: Tensor[R, 5] (batch index, x1, y1, x2, y2) or a list of Tensor[L_i, 4] -> Tensor[R, 5] like `like`."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"boxes as a Tensor must be [K, 5] (batch index, x1, y1, x2, y2), got {tuple(boxes.shape)}")
        return boxes.to(dtype=like.dtype, device=like.device)
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
            shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"boxes[{i}] must be a Tensor[L, 4] (x1, y1, x2, y2), got {shape}")
    if len(boxes) == 0:
        return like.new_zeros((0, 5))
    index = torch.cat([torch.full((len(b), 1), i, dtype=like.dtype, device=like.device) for i, b in enumerate(boxes)])
    return torch.cat((index, torch.cat(list(boxes)).to(like)), dim=1)  # (R, 1) + (R, 4) -> (R, 5)


def _check_input(input: Tensor, name: str) -> None:
    if not isinstance(input, Tensor) or input.dim() != 4:
        shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"{name}: input must be a Tensor[N, C, H, W], got {shape}")
    if not input.is_floating_point():
        raise TypeError(f"{name}: input must be floating point, got {input.dtype}")


# ------------------------------------------------------------------------------------------ where each RoI reads
# Both ops read their feature map(s) as one table of pixels, channels last: one row of C values per pixel. A RoI
# reads the rows of its own map -- for roi_align / roi_pool the one input map, for MultiScaleRoIPooler the FPN level
# that suits its size -- so each RoI carries where its map starts in the table, that map's size and its scale, and
# the op runs once over all RoIs whatever map each one reads (no per-level selection of RoIs, which on a GPU would
# wait for the data to know how many there are).
def _pixel_table(maps: Sequence[Tensor]) -> Tensor:
    """[Tensor[N, C, H_l, W_l]] -> Tensor[P, C], P = sum_l N*H_l*W_l: every pixel of every map, map by map, each
    map in (image, row, column) order."""
    if len(maps) == 1:
        return maps[0].permute(0, 2, 3, 1).reshape(-1, maps[0].shape[1])  # (N, C, H, W) -> (N*H*W, C)
    table = maps[0].new_empty((sum(m.numel() for m in maps) // maps[0].shape[1], maps[0].shape[1]))
    start = 0
    for m in maps:  # each map copied once, straight into its rows: (N, C, H, W) -> (N, H, W, C) rows of the table
        n, c, h, w = m.shape
        table[start:start + n * h * w].view(n, h, w, c).copy_(m.permute(0, 2, 3, 1))
        start += n * h * w
    return table


def _lookup(levels: Tensor, values: Sequence, dtype: torch.dtype) -> Tensor:
    """values[levels] for a short Python list, built on levels' device (copying the list there would wait for it)."""
    out = torch.full(levels.shape, values[0], dtype=dtype, device=levels.device)
    for level, value in enumerate(values[1:], 1):
        out = out.masked_fill(levels == level, value)
    return out


class _RoIMaps(NamedTuple):
    """Where each RoI reads in the pixel table. base: Tensor[R] int64, the row of pixel (0, 0) of the RoI's image in
    its map; height, width: that map's size; scale: image -> map coordinates. Plain numbers when every RoI reads the
    same map; Tensor[R] int64 (height, width) and Tensor[R, 1] (scale) when RoIs read different levels."""
    base: Tensor
    height: Union[int, Tensor]
    width: Union[int, Tensor]
    scale: Union[float, Tensor]


def _roi_maps(rois: Tensor, maps: Sequence[Tensor], scales: Sequence[float], levels: Tensor | None) -> _RoIMaps:
    """rois: Tensor[R, 5]; maps: [Tensor[N, C, H_l, W_l]] with their scales; levels: Tensor[R] int64 index into
    maps (None when there is one map) -> where each RoI reads in _pixel_table(maps)."""
    batch = rois[:, 0].to(torch.int64)
    if levels is None:
        _, _, h, w = maps[0].shape
        return _RoIMaps(batch * (h * w), h, w, float(scales[0]))
    shapes = [m.shape for m in maps]
    starts = list(itertools.accumulate((n * h * w for n, _, h, w in shapes), initial=0))  # each map's first row
    height = _lookup(levels, [h for _, _, h, _ in shapes], torch.int64)
    width = _lookup(levels, [w for _, _, _, w in shapes], torch.int64)
    base = _lookup(levels, starts[:-1], torch.int64) + batch * height * width
    return _RoIMaps(base, height, width, _lookup(levels, [float(s) for s in scales], rois.dtype)[:, None])


def _per_roi(value, which, dims: int):
    """A per-RoI quantity (a number, or Tensor[R]) for the RoIs `which`, shaped to broadcast against [Rc, ...]
    (dims dimensions)."""
    if not isinstance(value, Tensor):
        return value
    return value[which].view(-1, *([1] * (dims - 1)))


# ----------------------------------------------------------------------------------------------------------- RoIAlign
def _axis_samples(start: Tensor, end: Tensor, bins: int, size, sampling_ratio: int, aligned: bool, g_max: int):
    """Bilinear taps along one axis for every RoI, bin and sample (torchvision's rules).

    start, end: Tensor[R] RoI edges on the feature map (already scaled and shifted); size: the map's extent along the
    axis (an int, or Tensor[R] per RoI); g_max: the samples laid out per bin, G (sampling_ratio, or at least every
    RoI's adaptive grid: the caller knows it, so nothing is read back here) -> (low, high: int64 [R, bins, G],
    w_low, w_high: [R, bins, G] weights already divided by the samples per bin; 0 for samples outside the map and
    for the padding of RoIs with fewer samples than G).
    """
    size = _per_roi(size, slice(None), 3)
    length = end - start
    if not aligned:
        length = length.clamp(min=1.0)  # legacy: RoIs at least one feature pixel
    bin_size = length / bins  # (R,)
    if sampling_ratio > 0:
        grid = torch.full_like(bin_size, sampling_ratio, dtype=torch.int64)
    else:
        grid = torch.ceil(bin_size).to(torch.int64)  # adaptive: about one sample per feature pixel (_AlignPlan too)
    gridf = grid.to(start.dtype)[:, None, None]
    b = torch.arange(bins, dtype=start.dtype, device=start.device)[None, :, None]
    s = torch.arange(g_max, dtype=start.dtype, device=start.device)[None, None, :]
    # same evaluation order as the reference: start + bin * bin_size + (s + 0.5) * bin_size / grid
    pos = start[:, None, None] + b * bin_size[:, None, None] + (s + 0.5) * bin_size[:, None, None] / gridf.clamp(min=1)
    valid = (s < gridf) & (pos >= -1.0) & (pos <= size)  # (R, bins, G); outside the map -> contributes 0
    pos = pos.clamp(min=0)
    low = pos.floor().to(torch.int64)
    at_edge = low >= size - 1  # the last row/column is repeated instead of reading past the map
    low = torch.where(at_edge, size - 1, low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    scale = valid.to(pos.dtype) / gridf.clamp(min=1)
    zero = torch.zeros_like(frac)  # where(), not a product: a RoI with no samples must give 0, never 0 * nan
    return low, high, torch.where(valid, (1 - frac) * scale, zero), torch.where(valid, frac * scale, zero)


class _AlignPlan:
    """Which RoIs go together through the taps: chunks of RoIs whose taps fit _CHUNK_TAPS.

    With a fixed sampling_ratio every RoI has the same number of taps and chunks are slices in RoI order (nothing
    read back from the device); with adaptive sampling, RoIs are sorted by their grid (read back: one host sync) so
    that a chunk pads its RoIs to a grid close to their own, and each chunk's largest grid per axis is known on the
    host (`samples`).
    """

    def __init__(self, rois: Tensor, maps: _RoIMaps, output_size, sampling_ratio, aligned):
        self.ph, self.pw = output_size
        self.maps, self.sampling_ratio, self.aligned = maps, sampling_ratio, aligned
        offset = 0.5 if aligned else 0.0
        self.edges = rois[:, 1:] * maps.scale - offset  # (R, 4) x1, y1, x2, y2 on each RoI's map
        per_roi = 4 * self.ph * self.pw  # taps of one RoI per sample: ph * pw bins x 4 corners
        r = len(rois)
        if sampling_ratio > 0:
            self.order = None
            step = max(_CHUNK_TAPS // (sampling_ratio**2 * per_roi), 1)
            self.chunks = [(start, min(start + step, r)) for start in range(0, r, step)]  # (start, stop) into the RoIs
            self.samples = [(sampling_ratio, sampling_ratio)] * len(self.chunks)  # (G along y, G along x) per chunk
            return
        size = self.edges[:, 2:] - self.edges[:, :2]  # adaptive: ceil(bin size) samples per side, as _axis_samples
        if not aligned:
            size = size.clamp(min=1.0)
        # (R, 2) (G along y, G along x): the same operations as _axis_samples, so the same numbers
        grids = torch.stack((torch.ceil(size[:, 1] / self.ph), torch.ceil(size[:, 0] / self.pw)), 1)
        grids = grids.clamp(min=1).to(torch.int64).cpu()  # the one host sync
        side = grids.amax(1)
        order = torch.argsort(side, stable=True)
        self.order, side, grids = order.to(rois.device), side[order], grids[order]
        self.chunks, self.samples = [], []  # (start, stop) into self.order; the chunk's largest (G_y, G_x)
        start = 0
        while start < r:
            cost = torch.arange(1, r - start + 1) * side[start:] ** 2 * per_roi  # increasing in the chunk's end
            stop = start + max(int(torch.searchsorted(cost, torch.tensor(_CHUNK_TAPS), right=True)), 1)
            self.chunks.append((start, stop))
            self.samples.append(tuple(grids[start:stop].amax(0).tolist()))
            start = stop

    def taps(self, chunk: int):
        """The taps of chunk number `chunk` -> (which RoIs: a slice or int64 [Rc], pixel: int64 [Rc*ph*pw, T] row of
        the pixel table, weight: [Rc*ph*pw, T]), T = 4 G_y G_x taps per bin."""
        (start, stop), (g_y, g_x) = self.chunks[chunk], self.samples[chunk]
        which = slice(start, stop) if self.order is None else self.order[start:stop]
        x1, y1, x2, y2 = self.edges[which].unbind(1)
        rc = len(x1)
        row, wy = self._axis(y1, y2, self.ph, _per_roi(self.maps.height, which, 1), g_y)  # (Rc, ph, 2G_y)
        col, wx = self._axis(x1, x2, self.pw, _per_roi(self.maps.width, which, 1), g_x)  # (Rc, pw, 2G_x)
        # a bin's taps: every (row tap, column tap) pair, (Rc, ph, 1, 2G, 1) x (Rc, 1, pw, 1, 2G) -> (Rc, ph, pw, 2G, 2G)
        width = _per_roi(self.maps.width, which, 5)
        base = self.maps.base[which, None, None, None, None]
        pixel = base + row[:, :, None, :, None] * width + col[:, None, :, None, :]
        weight = wy[:, :, None, :, None] * wx[:, None, :, None, :]
        t = pixel.shape[-2] * pixel.shape[-1]
        return which, pixel.reshape(rc * self.ph * self.pw, t), weight.reshape(rc * self.ph * self.pw, t)

    def _axis(self, start, end, bins, size, g_max):
        low, high, w_low, w_high = _axis_samples(start, end, bins, size, self.sampling_ratio, self.aligned, g_max)
        # each sample reads two neighbours: (Rc, bins, G) x 2 -> (Rc, bins, G, 2) -> (Rc, bins, 2G)
        return torch.stack((low, high), -1).flatten(2), torch.stack((w_low, w_high), -1).flatten(2)


def _align_forward(table: Tensor, plan: _AlignPlan, num_rois: int) -> Tensor:
    """table: Tensor[P, C] pixel rows -> Tensor[R, ph*pw, C]: each bin the weighted sum of its taps' pixels."""
    c = table.shape[1]
    parts = []
    for chunk, (start, stop) in enumerate(plan.chunks):
        which, pixel, weight = plan.taps(chunk)
        # a weighted gather-sum over the table's rows: (Rc*ph*pw, T) taps -> (Rc*ph*pw, C)
        bins = F.embedding_bag(pixel, table, per_sample_weights=weight, mode="sum")
        parts.append((which, bins.view(stop - start, plan.ph * plan.pw, c)))
    if plan.order is None and len(parts) == 1:
        return parts[0][1]
    out = table.new_empty((num_rois, plan.ph * plan.pw, c))
    for which, bins in parts:
        out[which] = bins
    return out


def _align_backward(grad_out: Tensor, plan: _AlignPlan, num_pixels: int) -> Tensor:
    """grad_out: Tensor[R, ph*pw, C] -> Tensor[P, C]: every pixel collects weight x gradient of the bins it fed.

    The transpose of the forward: the same (pixel, weight) taps, grouped by pixel instead of by bin (a sort), summed
    with the same weighted gather-sum.
    """
    c = grad_out.shape[2]
    grad = grad_out.new_zeros((num_pixels, c))
    for chunk in range(len(plan.chunks)):
        which, pixel, weight = plan.taps(chunk)
        g = grad_out[which].reshape(-1, c)  # (Rc, ph*pw, C) -> (Rc*ph*pw, C)
        t = pixel.shape[1]
        key = pixel.flatten().to(torch.int32 if num_pixels < 2**31 else torch.int64)
        sorted_key, order = torch.sort(key, stable=True)  # taps grouped by pixel, in bin order inside a pixel
        # first tap of each pixel: how many taps read an earlier pixel (empty pixels get an empty bag); a search,
        # not bincount (which reads the largest key back on a GPU)
        offsets = torch.searchsorted(sorted_key, torch.arange(num_pixels, dtype=key.dtype, device=key.device))
        grad += F.embedding_bag(order // t, g, offsets, per_sample_weights=weight.flatten()[order], mode="sum")
    return grad


class _RoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, plan, num_rois):
        ctx.plan, ctx.num_pixels = plan, len(table)
        return _align_forward(table, plan, num_rois)

    @staticmethod
    def backward(ctx, grad_out):
        return _align_backward(grad_out.contiguous(), ctx.plan, ctx.num_pixels), None, None


def _align(rois: Tensor, maps: Sequence[Tensor], scales: Sequence[float], levels: Tensor | None, output_size,
           sampling_ratio: int, aligned: bool) -> Tensor:
    """RoIAlign of each RoI on its map (maps[levels[r]], or the one map): -> Tensor[R, C, ph, pw]."""
    plan = _AlignPlan(rois, _roi_maps(rois, maps, scales, levels), output_size, sampling_ratio, aligned)
    out = _RoIAlign.apply(_pixel_table(maps), plan, len(rois))
    return out.view(len(rois), plan.ph, plan.pw, out.shape[2]).permute(0, 3, 1, 2).contiguous()  # -> (R, C, ph, pw)


def roi_align(
    input: Tensor,
    boxes: BoxesArg,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign (Mask R-CNN): average of bilinear samples in each bin, no rounding anywhere.

    input: Tensor[N, C, H, W]; boxes: Tensor[R, 5] (batch index, x1, y1, x2, y2) or list of Tensor[L_i, 4]
    (x1, y1, x2, y2) per image; output_size: int or (ph, pw); spatial_scale: feature size / image size;
    sampling_ratio: samples per bin along each axis, <= 0 for adaptive ceil(roi size / output size) per RoI;
    aligned: False = legacy (no half-pixel shift, RoIs at least 1 x 1), True = shift boxes by -0.5 pixel.
    -> Tensor[R, C, ph, pw]. Differentiable in `input` (not in the boxes), as torchvision.ops.roi_align.

    Built in notebooks/06_roialign_vs_roipool.ipynb.
    """
    _check_input(input, "roi_align")
    if input.dtype in (torch.float16, torch.bfloat16):  # sums of many taps: accumulate in float32 (as under autocast)
        return roi_align(input.float(), boxes, output_size, spatial_scale, sampling_ratio, aligned).to(input.dtype)
    rois = convert_boxes_to_rois(boxes, input).detach()
    return _align(rois, [input], [spatial_scale], None, _pair(output_size), int(sampling_ratio), bool(aligned))


# ------------------------------------------------------------------------------------------------------------ RoIPool
def _pool_bins(start: Tensor, end: Tensor, bins: int, size):
    """Quantised bin edges along one axis: start, end: Tensor[R] (rounded RoI edges, int64); size: the map's extent
    (an int, or Tensor[R] per RoI) -> (lo, hi: [R, bins])."""
    length = (end - start + 1).clamp(min=1)
    bin_size = length.to(torch.float32) / bins
    b = torch.arange(bins, dtype=torch.float32, device=start.device)
    lo = torch.floor(b[None] * bin_size[:, None]).to(torch.int64) + start[:, None]
    hi = torch.ceil((b[None] + 1) * bin_size[:, None]).to(torch.int64) + start[:, None]
    size = _per_roi(size, slice(None), 2)
    return lo.clamp(min=0).clamp(max=size), hi.clamp(min=0).clamp(max=size)


def _round_half_away(x: Tensor) -> Tensor:
    """C's round(): halves away from zero (torch.round sends them to the even neighbour)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


class _RoIPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, rois, maps, output_size):
        """table: Tensor[P, C] pixel rows; maps: _RoIMaps -> Tensor[R, ph*pw, C] (each bin's max, 0 if empty)."""
        ph, pw = output_size
        r, c = len(rois), table.shape[1]
        x1, y1, x2, y2 = _round_half_away(rois[:, 1:] * maps.scale).to(torch.int64).unbind(1)
        ylo, yhi = _pool_bins(y1, y2, ph, maps.height)  # (R, ph)
        xlo, xhi = _pool_bins(x1, x2, pw, maps.width)  # (R, pw)
        longest = torch.stack(((yhi - ylo).amax(), (xhi - xlo).amax())).tolist() if r else [1, 1]  # one host sync
        len_y, len_x = max(longest[0], 1), max(longest[1], 1)
        rows = ylo[:, :, None] + torch.arange(len_y, device=ylo.device)  # (R, ph, Ly)
        cols = xlo[:, :, None] + torch.arange(len_x, device=xlo.device)  # (R, pw, Lx)
        row_ok, col_ok = rows < yhi[:, :, None], cols < xhi[:, :, None]
        # table row of each bin's pixels: (R, ph, Ly, pw, Lx); rows/cols past the bin are masked, clamp keeps them legal
        rows = rows.clamp(max=_per_roi(maps.height, slice(None), 3) - 1)
        cols = cols.clamp(max=_per_roi(maps.width, slice(None), 3) - 1)
        width = _per_roi(maps.width, slice(None), 5)
        pixel = maps.base[:, None, None, None, None] + rows[:, :, :, None, None] * width + cols[:, None, None, :, :]
        ok = row_ok[:, :, :, None, None] & col_ok[:, None, None, :, :]
        pixel = pixel.permute(0, 1, 3, 2, 4).reshape(r, ph * pw, len_y * len_x)  # row-major inside a bin
        ok = ok.permute(0, 1, 3, 2, 4).reshape(r, ph * pw, len_y * len_x)
        out = table.new_zeros((r, ph * pw, c))
        argmax = torch.full((r, ph * pw, c), -1, dtype=torch.int64, device=table.device)
        step = max(_CHUNK_FLOATS // max(c * ph * pw * len_y * len_x, 1), 1)
        for s in range(0, r, step):  # chunks of RoIs (bounded memory), not a loop over RoIs
            sl = slice(s, s + step)
            # channels first, a bin's pixels last and contiguous: argmax over the last dim is ~4x faster on a CPU
            # than over a strided middle one (and max(dim) with indices is slow on a busy multi-threaded CPU)
            vals = table.t()[:, pixel[sl]].masked_fill(~ok[sl], float("-inf"))  # (C, Rc, bins, L)
            where = vals.argmax(dim=3)  # (C, Rc, bins): first maximum in row-major order, as the reference
            best = vals.gather(3, where[..., None])[..., 0].permute(1, 2, 0)  # (C, Rc, bins) -> (Rc, bins, C)
            where = where.permute(1, 2, 0)  # (C, Rc, bins) -> (Rc, bins, C)
            nonempty = ok[sl].any(dim=2)[:, :, None]  # (Rc, bins, 1)
            out[sl] = torch.where(nonempty, best, 0)
            argmax[sl] = torch.where(nonempty, torch.gather(pixel[sl], 2, where), -1)
        ctx.save_for_backward(argmax)
        ctx.num_pixels = len(table)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (argmax,) = ctx.saved_tensors
        c = argmax.shape[2]
        grad = grad_out.new_zeros(ctx.num_pixels * c)
        hit = argmax >= 0  # empty bins send no gradient (masked, not selected: no host sync)
        target = argmax.clamp(min=0) * c + torch.arange(c, device=argmax.device)  # flat (pixel, channel)
        grad.index_add_(0, target.flatten(), torch.where(hit, grad_out, 0).flatten())
        return grad.view(ctx.num_pixels, c), None, None, None


def _pool(rois: Tensor, maps: Sequence[Tensor], scales: Sequence[float], levels: Tensor | None, output_size) -> Tensor:
    """RoIPool of each RoI on its map (maps[levels[r]], or the one map): -> Tensor[R, C, ph, pw]."""
    ph, pw = output_size
    out = _RoIPool.apply(_pixel_table(maps), rois, _roi_maps(rois, maps, scales, levels), output_size)
    return out.view(len(rois), ph, pw, out.shape[2]).permute(0, 3, 1, 2).contiguous()  # (R, ph*pw, C) -> (R, C, ph, pw)


def roi_pool(input: Tensor, boxes: BoxesArg, output_size, spatial_scale: float = 1.0) -> Tensor:
    """RoIPool (Fast R-CNN): round the box to feature pixels, split it into quantised bins, max over each bin.

    input: Tensor[N, C, H, W]; boxes: Tensor[R, 5] (batch index, x1, y1, x2, y2) or list of Tensor[L_i, 4];
    output_size: int or (ph, pw); spatial_scale: feature size / image size -> Tensor[R, C, ph, pw].
    As torchvision.ops.roi_pool: box edges rounded (halves away from zero), RoIs at least 1 x 1 pixel, bin b covers
    [floor(b * bin), ceil((b + 1) * bin)) clipped to the map, empty bins give 0; the gradient goes to each max.

    Built in notebooks/06_roialign_vs_roipool.ipynb.
    """
    _check_input(input, "roi_pool")
    rois = convert_boxes_to_rois(boxes, input).detach()
    return _pool(rois, [input], [spatial_scale], None, _pair(output_size))


# ------------------------------------------------------------------------------------------ readable references
# The same ops written as the definition reads: a loop over RoIs, bins and samples. Slow (Python loops), but each
# line is one step of the method; tests and notebook 06 assert that the fast ops above give the same numbers.
def _bilinear(feature: Tensor, y: float, x: float) -> Tensor:
    """feature: Tensor[C, H, W] read at the real point (y, x) (row, column; pixel k's value sits at k) -> Tensor[C].

    torchvision's border rules: 0 more than one pixel outside the map; up to there the edge pixel is repeated.
    """
    c, h, w = feature.shape
    if y < -1 or y > h or x < -1 or x > w:
        return feature.new_zeros(c)
    y, x = min(max(y, 0.0), h - 1), min(max(x, 0.0), w - 1)
    y0, x0 = int(y), int(x)  # the top-left neighbour (floor: y, x >= 0 here)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    dy, dx = y - y0, x - x0
    return ((1 - dy) * (1 - dx) * feature[:, y0, x0] + (1 - dy) * dx * feature[:, y0, x1]
            + dy * (1 - dx) * feature[:, y1, x0] + dy * dx * feature[:, y1, x1])


def roi_align_reference(input: Tensor, boxes: BoxesArg, output_size, spatial_scale: float = 1.0,
                        sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """RoIAlign written as loops: the arguments and result of `roi_align` (gradient included), much slower.

    Each RoI is cut into ph x pw equal bins; each bin is the mean of grid_h x grid_w bilinear samples, one at the
    centre of each of its equal sub-cells. Nothing is rounded.

    Built in notebooks/06_roialign_vs_roipool.ipynb.
    """
    _check_input(input, "roi_align_reference")
    rois = convert_boxes_to_rois(boxes, input)
    ph, pw = _pair(output_size)
    c = input.shape[1]
    bins = []  # one Tensor[C] per bin, RoI by RoI, row by row
    for n, *box in rois.tolist():
        x1, y1, x2, y2 = (v * spatial_scale - (0.5 if aligned else 0.0) for v in box)  # onto the feature map
        height, width = (y2 - y1, x2 - x1) if aligned else (max(y2 - y1, 1.0), max(x2 - x1, 1.0))
        bin_h, bin_w = height / ph, width / pw
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_h)  # adaptive: ~1 sample per pixel
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_w)
        for i in range(ph):
            for j in range(pw):
                ys = [y1 + i * bin_h + (g + 0.5) * bin_h / grid_h for g in range(grid_h)]
                xs = [x1 + j * bin_w + (g + 0.5) * bin_w / grid_w for g in range(grid_w)]
                samples = [_bilinear(input[int(n)], y, x) for y in ys for x in xs]
                bins.append(sum(samples) / len(samples) if samples else input.new_zeros(c))
    out = torch.stack(bins) if bins else input.new_zeros((0, c))
    return out.view(len(rois), ph, pw, c).permute(0, 3, 1, 2)  # (R*ph*pw, C) -> (R, C, ph, pw)


def roi_pool_reference(input: Tensor, boxes: BoxesArg, output_size, spatial_scale: float = 1.0) -> Tensor:
    """RoIPool written as loops: the arguments and result of `roi_pool` (gradient included), much slower.

    The box is rounded to whole feature pixels and cut into ph x pw bins of whole pixels (the start of each bin
    rounded down, its end rounded up, so neighbouring bins may share a row); each bin keeps its largest value.

    Built in notebooks/06_roialign_vs_roipool.ipynb.
    """
    _check_input(input, "roi_pool_reference")
    rois = convert_boxes_to_rois(boxes, input)
    ph, pw = _pair(output_size)
    c, h, w = input.shape[1:]
    bins = []  # one Tensor[C] per bin, RoI by RoI, row by row
    for n, *box in rois.tolist():
        x1, y1, x2, y2 = (int(math.copysign(math.floor(abs(v * spatial_scale) + 0.5), v)) for v in box)  # round
        # bin sizes in float32 arithmetic, as the fast op (and torchvision's kernel on float32 maps)
        bin_h = torch.tensor(max(y2 - y1 + 1, 1), dtype=torch.float32) / ph
        bin_w = torch.tensor(max(x2 - x1 + 1, 1), dtype=torch.float32) / pw
        for i in range(ph):
            top = min(max(y1 + int(torch.floor(i * bin_h)), 0), h)
            bottom = min(max(y1 + int(torch.ceil((i + 1) * bin_h)), 0), h)
            for j in range(pw):
                left = min(max(x1 + int(torch.floor(j * bin_w)), 0), w)
                right = min(max(x1 + int(torch.ceil((j + 1) * bin_w)), 0), w)
                if bottom > top and right > left:  # the bin's max; its first maximum gets the gradient
                    pixels = input[int(n), :, top:bottom, left:right].flatten(1)  # (C, h, w) -> (C, h*w)
                    bins.append(pixels.gather(1, pixels.argmax(dim=1, keepdim=True))[:, 0])
                else:  # an empty bin (outside the map) gives 0
                    bins.append(input.new_zeros(c))
    out = torch.stack(bins) if bins else input.new_zeros((0, c))
    return out.view(len(rois), ph, pw, c).permute(0, 3, 1, 2)  # (R*ph*pw, C) -> (R, C, ph, pw)


# ---------------------------------------------------------------------------------------------------- multi-scale
def assign_levels(
    boxes: Tensor,
    k_min: int,
    k_max: int,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """FPN level of each box: floor(k0 + log2(sqrt(area) / 224) + eps) clamped to [k_min, k_max].

    boxes: Tensor[R, 4] (x1, y1, x2, y2) in image coordinates -> Tensor[R] int64 level index counted from k_min
    (0 = the finest level given). A 224 x 224 box goes to level k0 = 4; each halving of its side goes one finer.

    Built in notebooks/06_roialign_vs_roipool.ipynb.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"assign_levels: boxes must be Tensor[R, 4], got {tuple(boxes.shape)}")
    if k_min > k_max:
        raise ValueError(f"assign_levels: k_min={k_min} > k_max={k_max}")
    scale = torch.sqrt(box_area(boxes))
    levels = torch.floor(canonical_level + torch.log2(scale / canonical_scale) + eps)
    return (levels.clamp(min=k_min, max=k_max) - k_min).to(torch.int64)


class MultiScaleRoIPooler(nn.Module):
    """Pool every RoI from the FPN level that suits its size, with RoIAlign (or RoIPool, for notebook 06's ablation).

    featmap_names: which entries of the feature dict to use, finest first; output_size: int (S);
    sampling_ratio: samples per bin (<= 0 adaptive); aligned: half-pixel shift; pool: "align" | "pool".
    forward(features: dict[str, Tensor[N, C, H_l, W_l]], boxes: list[Tensor[R_i, 4]], image_sizes: list[(h, w)])
    -> Tensor[sum R_i, C, S, S] in the features' dtype, RoIs in the order of the concatenated boxes.
    Each level's scale is inferred as torchvision does: 2 ** round(log2(H_l / max image height)).
    All RoIs are pooled at once, each from its own level (see _RoIMaps): no per-level selection of RoIs, so nothing
    waits for the device to say how many RoIs a level has. Under mixed precision (autocast) the maps arrive in
    float16 / bfloat16: pooling then runs on float32 copies with autocast off, as torchvision's roi_align does under
    autocast (bilinear weights and sums keep full precision), and the result comes back in the maps' dtype.

    Built in notebooks/06_roialign_vs_roipool.ipynb.
    """

    def __init__(self, featmap_names, output_size, sampling_ratio: int, aligned: bool = False, pool: str = "align"):
        super().__init__()
        if pool not in ("align", "pool"):
            raise ValueError(f"MultiScaleRoIPooler: pool must be 'align' or 'pool', got {pool!r}")
        if not featmap_names:
            raise ValueError("MultiScaleRoIPooler: featmap_names is empty")
        self.featmap_names = list(featmap_names)
        self.output_size = _pair(output_size)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.pool = pool

    def forward(self, features: dict, boxes: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]]) -> Tensor:
        missing = [name for name in self.featmap_names if name not in features]
        if missing:
            raise ValueError(f"MultiScaleRoIPooler: features lack {missing} (have {list(features)})")
        maps = [features[name] for name in self.featmap_names]
        max_h = max(int(size[0]) for size in image_sizes)
        scales = [2.0 ** round(math.log2(m.shape[-2] / max_h)) for m in maps]
        dtype = maps[0].dtype
        with torch.autocast(maps[0].device.type, enabled=False):
            if dtype in (torch.float16, torch.bfloat16):
                maps, boxes = [m.float() for m in maps], [b.float() for b in boxes]
            rois = convert_boxes_to_rois(list(boxes), maps[0]).detach()
            levels = None
            if len(maps) > 1:
                levels = assign_levels(rois[:, 1:], int(-math.log2(scales[0])), int(-math.log2(scales[-1])))
            if self.pool == "pool":
                pooled = _pool(rois, maps, scales, levels, self.output_size)
            else:
                pooled = _align(rois, maps, scales, levels, self.output_size, self.sampling_ratio, self.aligned)
        return pooled.to(dtype)


# ---------------------------------------------------------------------------------------------- for the pictures
def roi_pool_bins(box: Tensor, output_size, spatial_scale: float = 1.0, feature_size=(10**9, 10**9)):
    """RoIPool's quantised bins of one box: box Tensor[4] (x1, y1, x2, y2) -> (rows [ph, 2], cols [pw, 2]) int64,
    each bin covering feature pixels [start, end) along its axis (clipped to feature_size (H, W)).

    Built in notebooks/06_roialign_vs_roipool.ipynb (drawn by minimaskrcnn.viz.roi).
    """
    ph, pw = _pair(output_size)
    x1, y1, x2, y2 = (_round_half_away(box[k:k + 1].double() * spatial_scale).to(torch.int64) for k in range(4))
    rows = torch.stack(_pool_bins(y1, y2, ph, feature_size[0]), dim=-1)[0]  # (1, ph, 2) -> (ph, 2)
    cols = torch.stack(_pool_bins(x1, x2, pw, feature_size[1]), dim=-1)[0]
    return rows, cols


def roi_align_sample_points(box: Tensor, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, feature_size=(10**9, 10**9)):
    """RoIAlign's sample positions of one box: -> (ys [ph, G], xs [pw, G], valid_y, valid_x bool) in feature pixels
    (before border clamping; a sample counts when both its valid_y and valid_x are True).

    Built in notebooks/06_roialign_vs_roipool.ipynb (drawn by minimaskrcnn.viz.roi).
    """
    ph, pw = _pair(output_size)
    offset = 0.5 if aligned else 0.0
    b = box.double()[None] * spatial_scale - offset  # (4,) -> (1, 4)
    out = []
    for start, end, bins, size in ((b[:, 1], b[:, 3], ph, feature_size[0]), (b[:, 0], b[:, 2], pw, feature_size[1])):
        length = end - start if aligned else (end - start).clamp(min=1.0)
        grid = sampling_ratio if sampling_ratio > 0 else max(int(math.ceil(float(length / bins))), 0)
        k = torch.arange(bins, dtype=torch.float64)[:, None]
        s = torch.arange(grid, dtype=torch.float64)[None, :]
        pos = start + k * (length / bins) + (s + 0.5) * (length / bins) / max(grid, 1)  # (bins, G)
        out.append((pos, (pos >= -1) & (pos <= size)))
    (ys, vy), (xs, vx) = out
    return ys, xs, vy, vx
