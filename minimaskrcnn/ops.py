"""The standalone operators, with torchvision.ops' signatures and semantics so users can swap one for the other.

    from minimaskrcnn.ops import box_iou, nms, batched_nms, roi_pool, roi_align
"""
from minimaskrcnn.boxes import batched_nms, box_iou, nms
from minimaskrcnn.roi_ops import roi_align, roi_pool

__all__ = ["box_iou", "nms", "batched_nms", "roi_pool", "roi_align"]
