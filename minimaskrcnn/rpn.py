"""Region Proposal Network: score every anchor as object / not object, refine it, keep the best as proposals.

Built in notebooks/05_rpn.ipynb.

Shape glossary
    N        images in the batch
    L        feature levels (5 with the FPN: p2, p3, p4, p5, pool)
    C        channels of the feature maps
    A        anchors per location (3: one size x three aspect ratios per level)
    H_l, W_l height and width of level l;  T = sum over levels of H_l*W_l*A, all anchors of one image
    G        ground-truth boxes of one image
    P_i      proposals kept for image i
Boxes are absolute (x1, y1, x2, y2) floats in the coordinates of the padded input batch.
Every flattened per-anchor tensor is ordered as the anchors: level, then location (row-major), then anchor.

The pieces, each a plain function used by RegionProposalNetwork and by the notebook:
    flatten_predictions  head outputs per level -> one row per anchor
    assign_targets       anchors + ground truth -> labels (1 / 0 / -1) and matched boxes
    rpn_losses           sampled BCE + smooth-L1
    filter_proposals     decoded boxes -> per-level top-n, clip, small-box and score filters, NMS, post-NMS top-n
"""
import torch
from torch import Tensor, nn

from minimaskrcnn.anchors import AnchorGenerator
from minimaskrcnn.boxes import box_iou, clip_boxes, decode_boxes, encode_boxes, large_boxes, nms_mask, upcast
from minimaskrcnn.losses import rpn_box_loss, rpn_objectness_loss
from minimaskrcnn.matching import BalancedSampler, Matcher

RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)  # the RPN's deltas are not rescaled (the box head uses 10, 10, 5, 5)


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then two 1x1 convs: A objectness logits and 4A box deltas per location.

    The same weights run on every level (anchors of all sizes look alike relative to their level's stride).
    `conv` is Sequential(Sequential(Conv2d, ReLU)) so parameter names match torchvision's (conv.0.0.weight).
    """

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU(inplace=True)))
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """features: [Tensor[N, C, H_l, W_l]] -> (logits [Tensor[N, A, H_l, W_l]], deltas [Tensor[N, 4A, H_l, W_l]])."""
        logits, deltas = [], []
        for x in features:
            t = self.conv(x)
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def flatten_predictions(logits: list[Tensor], deltas: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Head outputs per level -> (objectness Tensor[N, T], deltas Tensor[N, T, 4]) in the anchors' order."""
    flat_logits, flat_deltas = [], []
    for lg, dl in zip(logits, deltas):
        n, a, h, w = lg.shape
        flat_logits.append(lg.permute(0, 2, 3, 1).reshape(n, h * w * a))  # (N, A, H, W) -> (N, H*W*A)
        dl = dl.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2)  # (N, A*4, H, W) -> (N, H, W, A, 4)
        flat_deltas.append(dl.reshape(n, h * w * a, 4))  # -> (N, H*W*A, 4)
    return torch.cat(flat_logits, dim=1), torch.cat(flat_deltas, dim=1)


def assign_targets(anchors: Tensor, gt_boxes: Tensor, matcher: Matcher) -> tuple[Tensor, Tensor]:
    """Label the anchors of one image. anchors: Tensor[T, 4], gt_boxes: Tensor[G, 4] ->
    (labels Tensor[T] float: 1 positive, 0 negative, -1 ignored; matched_boxes Tensor[T, 4]: each anchor's
    matched ground-truth box, meaningful for positives only). No ground truth -> all negative, zero boxes.
    """
    if gt_boxes.numel() == 0:
        labels = torch.zeros(anchors.shape[0], dtype=anchors.dtype, device=anchors.device)
        return labels, torch.zeros_like(anchors)
    matches = matcher(box_iou(gt_boxes, anchors))  # (G, T) -> (T,)
    matched_boxes = gt_boxes[matches.clamp(min=0)]
    labels = torch.where(matches == Matcher.BETWEEN_THRESHOLDS, -1.0, (matches >= 0).to(anchors.dtype))
    return labels, matched_boxes


def rpn_losses(objectness: Tensor, pred_deltas: Tensor, labels: list[Tensor], target_deltas: list[Tensor],
               sampler: BalancedSampler) -> dict[str, Tensor]:
    """objectness: Tensor[N, T] logits, pred_deltas: Tensor[N, T, 4], labels / target_deltas per image
    ([Tensor[T]], [Tensor[T, 4]]) -> {"loss_objectness": BCE over the sampled anchors (mean),
    "loss_rpn_box_reg": smooth-L1 (beta 1/9) over the sampled positives, summed, / number sampled}.
    The sampled anchors are masks over all of them (no variable-size selection: no host sync but the sampler's).
    """
    pos_masks, neg_masks = sampler(labels)
    positive = torch.cat(pos_masks)  # (N*T,) bool
    sampled = positive | torch.cat(neg_masks)
    objectness, pred_deltas = objectness.reshape(-1), pred_deltas.reshape(-1, 4)  # (N, T) -> (N*T,)
    labels, target_deltas = torch.cat(labels), torch.cat(target_deltas)
    return {
        "loss_objectness": rpn_objectness_loss(objectness, labels, sampled),
        "loss_rpn_box_reg": rpn_box_loss(pred_deltas, target_deltas, sampled.sum(), positive=positive),
    }


def filter_proposals(proposals: Tensor, objectness: Tensor, level_sizes: list[int], image_sizes: list[tuple[int, int]],
                     pre_nms_top_n: int, post_nms_top_n: int, nms_thresh: float, min_size: float = 1e-3,
                     score_thresh: float = 0.0) -> tuple[list[Tensor], list[Tensor]]:
    """Turn every decoded anchor into a short list of proposals per image.

    proposals: Tensor[N, T, 4] decoded boxes, objectness: Tensor[N, T] logits, level_sizes: [H_l*W_l*A] per level,
    image_sizes: [(h, w)] unpadded. Steps: the pre_nms_top_n best logits of each level, sigmoid, clip to the image,
    drop boxes smaller than min_size and scores below score_thresh, NMS at nms_thresh within each level, keep the
    post_nms_top_n best. -> (boxes [Tensor[P_i, 4]], scores [Tensor[P_i]] probabilities), by decreasing score.

    Every step until the last keeps fixed sizes (dropped boxes are masked out, NMS runs on all images of a level at
    once): one host synchronisation for the whole batch, to learn how many proposals each image keeps.
    """
    objectness = upcast(objectness.detach())  # float32 logits and scores under autocast
    batch_idx = torch.arange(proposals.shape[0], device=proposals.device)[:, None]
    levels, offset = [], 0  # per level: (boxes Tensor[N, k, 4], scores Tensor[N, k], alive Tensor[N, k] bool)
    for ob in objectness.split(level_sizes, dim=1):
        logits, idx = ob.topk(min(pre_nms_top_n, ob.shape[1]), dim=1)  # (N, k), by decreasing logit
        boxes = torch.stack([clip_boxes(b, size) for b, size in zip(proposals[batch_idx, idx + offset], image_sizes)])
        scores = torch.sigmoid(logits)
        levels.append((boxes, scores, large_boxes(boxes, min_size) & (scores >= score_thresh)))
        offset += ob.shape[1]
    for exact in (False, True):  # exact only when a block of NMS needed more than NMS_ROUNDS rounds (see nms_mask)
        keep, settled = zip(*(nms_mask(boxes, nms_thresh, alive, exact=exact) for boxes, _, alive in levels))
        keep = torch.cat(keep, dim=1)  # (N, sum k)
        counts = torch.where(torch.stack(settled).all(), keep.sum(dim=1), -1).tolist()  # the one host sync
        if min(counts) >= 0:
            break
    boxes, scores = torch.cat([b for b, _, _ in levels], dim=1), torch.cat([s for _, s, _ in levels], dim=1)
    # kept boxes first, by decreasing score (ties: level, then rank in the level, as a stable sort of the candidates)
    order = torch.sort(torch.where(keep, scores, -1.0), dim=1, descending=True, stable=True).indices
    final_boxes, final_scores = [], []
    for i, count in enumerate(counts):
        best = order[i, : min(count, post_nms_top_n)]
        final_boxes.append(boxes[i, best])
        final_scores.append(scores[i, best])
    return final_boxes, final_scores


class RegionProposalNetwork(nn.Module):
    """Anchors + head + targets + losses + proposal filtering, with train / eval top-n set separately.

    forward(features [Tensor[N, C, H_l, W_l]], image_sizes [(h, w)] unpadded, batch_shape (H, W) padded,
    targets [{"boxes": Tensor[G, 4], ...}] or None) -> (proposals [Tensor[P_i, 4]], losses dict; empty unless
    training with targets).
    """

    def __init__(self, anchor_generator: AnchorGenerator, head: RPNHead, *, fg_iou_thresh: float, bg_iou_thresh: float,
                 batch_size_per_image: int, positive_fraction: float, pre_nms_top_n_train: int, pre_nms_top_n_test: int,
                 post_nms_top_n_train: int, post_nms_top_n_test: int, nms_thresh: float, min_size: float,
                 score_thresh: float):
        super().__init__()
        self.anchor_generator, self.head = anchor_generator, head
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self._pre_nms_top_n = {"train": pre_nms_top_n_train, "test": pre_nms_top_n_test}
        self._post_nms_top_n = {"train": post_nms_top_n_train, "test": post_nms_top_n_test}
        self.nms_thresh, self.min_size, self.score_thresh = nms_thresh, min_size, score_thresh

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["train" if self.training else "test"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["train" if self.training else "test"]

    def predict(self, features: list[Tensor], batch_shape: tuple[int, int]):
        """Run the head on every level and decode every anchor (no filtering) ->
        (anchors Tensor[T, 4], level_sizes [H_l*W_l*A], objectness Tensor[N, T] logits, deltas Tensor[N, T, 4],
        proposals Tensor[N, T, 4] decoded from the detached deltas)."""
        logits, deltas = self.head(features)
        anchors = self.anchor_generator(tuple(batch_shape), [f.shape[-2:] for f in features], features[0].device)
        level_sizes = [len(a) for a in anchors]
        anchors = torch.cat(anchors)  # (T, 4), shared by every image of the batch
        objectness, pred_deltas = flatten_predictions(logits, deltas)  # (N, T), (N, T, 4)
        num_images = objectness.shape[0]
        proposals = decode_boxes(pred_deltas.detach().reshape(-1, 4), anchors.repeat(num_images, 1), RPN_BOX_WEIGHTS)
        return anchors, level_sizes, objectness, pred_deltas, proposals.view(num_images, -1, 4)  # (N*T, 4) -> (N, T, 4)

    def forward(self, features: list[Tensor], image_sizes: list[tuple[int, int]], batch_shape: tuple[int, int],
                targets: list[dict] | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        if len(image_sizes) != features[0].shape[0]:
            raise ValueError(f"{features[0].shape[0]} images in the features but {len(image_sizes)} image_sizes")
        anchors, level_sizes, objectness, pred_deltas, proposals = self.predict(features, batch_shape)
        num_images = objectness.shape[0]
        boxes, _ = filter_proposals(proposals, objectness, level_sizes, image_sizes, self.pre_nms_top_n(),
                                    self.post_nms_top_n(), self.nms_thresh, self.min_size, self.score_thresh)
        losses = {}
        if self.training and targets is not None:
            if len(targets) != num_images:
                raise ValueError(f"{num_images} images but {len(targets)} targets")
            labels, target_deltas = [], []
            for target in targets:
                image_labels, matched_boxes = assign_targets(anchors, target["boxes"].to(anchors.dtype), self.matcher)
                labels.append(image_labels)
                target_deltas.append(encode_boxes(matched_boxes, anchors, RPN_BOX_WEIGHTS))
            losses = rpn_losses(objectness, pred_deltas, labels, target_deltas, self.sampler)
        return boxes, losses


def proposal_recall(proposals: list[Tensor], gt_boxes: list[Tensor], num_proposals: int, iou_thresh: float) -> float:
    """Fraction of all ground-truth boxes that one of their image's first num_proposals proposals covers with
    IoU >= iou_thresh. proposals: [Tensor[P_i, 4]] sorted by score, gt_boxes: [Tensor[G_i, 4]]. Built in 05_rpn."""
    found, total = 0, 0
    for boxes, gt in zip(proposals, gt_boxes):
        total += len(gt)
        if len(gt) and num_proposals > 0 and len(boxes):
            found += int((box_iou(gt, boxes[:num_proposals]).max(dim=1).values >= iou_thresh).sum())
    if total == 0:
        raise ValueError("proposal_recall: no ground-truth boxes in gt_boxes")
    return found / total
