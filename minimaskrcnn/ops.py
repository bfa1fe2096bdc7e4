"""The standalone operators, with torchvision.ops' signatures and semantics so users can swap one for the other.

    from minimaskrcnn.ops import box_iou, nms, batched_nms, roi_pool, roi_align, RoIAlign, RoIPool

Shape glossary
    N          images in the batch
    C          channels of the feature map
    H, W       feature map height and width
    K          RoIs (boxes) over the whole batch
    ph, pw     output size of the RoI ops

The functions are leaves of torch.fx symbolic tracing: called on fx Proxies they record one call_function node
instead of being traced through (their loops and data-dependent sizes cannot be traced), whichever way they were
imported. torchvision marks its ops with torch.fx.wrap, which reaches only calls that look the name up in the
module that called wrap; here the function itself notices the Proxy. The RoIAlign / RoIPool modules hold the
settings of one op, as torchvision's modules of the same names, and trace to the same leaf calls.
"""
import functools

import torch
from torch import Tensor, nn

from minimaskrcnn import boxes as _boxes
from minimaskrcnn import roi_ops as _roi_ops

__all__ = ["box_iou", "nms", "batched_nms", "roi_pool", "roi_align", "RoIAlign", "RoIPool"]


def _fx_leaf(fn):
    """fn, recorded as one call_function node when torch.fx traces a call with a Proxy among its arguments."""

    @functools.wraps(fn)
    def leaf(*args, **kwargs):
        proxies = []
        torch.fx.node.map_aggregate((args, kwargs), lambda a: isinstance(a, torch.fx.Proxy) and proxies.append(a))
        if proxies:
            return proxies[0].tracer.create_proxy("call_function", leaf, args, kwargs)
        return fn(*args, **kwargs)

    leaf.__module__ = __name__  # traced code names it minimaskrcnn.ops.<name>, this very function
    return leaf


box_iou = _fx_leaf(_boxes.box_iou)
nms = _fx_leaf(_boxes.nms)
batched_nms = _fx_leaf(_boxes.batched_nms)
roi_align = _fx_leaf(_roi_ops.roi_align)
roi_pool = _fx_leaf(_roi_ops.roi_pool)


class RoIAlign(nn.Module):
    """roi_align with its settings fixed (torchvision.ops.RoIAlign): forward(input Tensor[N, C, H, W],
    rois Tensor[K, 5] (batch index, x1, y1, x2, y2) or list of Tensor[L, 4]) -> Tensor[K, C, ph, pw].

    Built in notebooks/06_roialign_vs_roipool.ipynb (the function).
    """

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned: bool = False):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale
        self.sampling_ratio, self.aligned = sampling_ratio, aligned

    def forward(self, input: Tensor, rois) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})")


class RoIPool(nn.Module):
    """roi_pool with its settings fixed (torchvision.ops.RoIPool): forward(input Tensor[N, C, H, W],
    rois Tensor[K, 5] or list of Tensor[L, 4]) -> Tensor[K, C, ph, pw].

    Built in notebooks/06_roialign_vs_roipool.ipynb (the function).
    """

    def __init__(self, output_size, spatial_scale: float):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale

    def forward(self, input: Tensor, rois) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"
