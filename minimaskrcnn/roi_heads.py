"""RoI heads: the second stage of Mask R-CNN, which classifies proposals, refines their boxes and predicts masks.

Built in notebooks/07_box_head.ipynb (proposal sampling, box head, post-processing) and
notebooks/08_mask_head.ipynb (mask head, mask targets).

Shape glossary
    N        images in the batch
    P_i      proposals of image i (after ground-truth boxes are appended, in training)
    R        RoIs over the whole batch (sum of the R_i sampled or kept per image)
    G        ground-truth instances of one image
    K        object classes; K + 1 with background (class 0)
    C        channels of the feature maps
    S        RoI pooling output size (7 for boxes, 14 for masks in the reference)
    M        mask resolution (2 S: 28 in the reference)
    D        detections of one image
Boxes are absolute (x1, y1, x2, y2) floats in the coordinates of the resized (network-input) image.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minimaskrcnn.boxes import (batched_nms, box_iou, clip_boxes, decode_boxes, encode_boxes, large_boxes, true_indices,
                                upcast)
from minimaskrcnn.losses import box_regression_loss, classifier_loss, mask_loss
from minimaskrcnn.masks import mask_targets
from minimaskrcnn.matching import BalancedSampler, Matcher


# ----------------------------------------------------------------------------------------------------------------
# Training: which proposals the heads learn from, and what they should predict for them
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class SampledRoIs:
    """The RoIs sampled for training, per image (lists of length N).

    rois: [Tensor[R_i, 4]]; labels: [Tensor[R_i] int64] (matched class, 0 = background);
    matched_idxs: [Tensor[R_i] int64] (index of the matched ground truth; 0 for backgrounds, unused);
    regression_targets: [Tensor[R_i, 4]] (deltas from each RoI to its ground-truth box, box-coder weights applied);
    num_positive: [int] (how many of each image's RoIs have labels > 0; None: count them, a host sync per image).
    """

    rois: list[Tensor]
    labels: list[Tensor]
    matched_idxs: list[Tensor]
    regression_targets: list[Tensor]
    num_positive: list[int] | None = None


def assign_targets_to_proposals(
    proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, matcher: Matcher
) -> tuple[Tensor, Tensor]:
    """Match each proposal of one image to a ground-truth box.

    proposals: Tensor[P, 4], gt_boxes: Tensor[G, 4], gt_labels: Tensor[G] -> (matched_idxs Tensor[P] int64
    clamped to >= 0, labels Tensor[P] int64: the matched box's class, 0 below the low threshold (background),
    -1 between the thresholds (ignored)). An image without ground truth gives all backgrounds.
    """
    if gt_boxes.numel() == 0:
        zeros = torch.zeros(proposals.shape[0], dtype=torch.int64, device=proposals.device)
        return zeros, zeros.clone()
    matches = matcher(box_iou(gt_boxes, proposals))  # (G, P) -> (P,)
    matched_idxs = matches.clamp(min=0)
    labels = gt_labels[matched_idxs].to(torch.int64)
    labels = torch.where(matches == Matcher.BELOW_LOW_THRESHOLD, 0, labels)
    labels = torch.where(matches == Matcher.BETWEEN_THRESHOLDS, -1, labels)
    return matched_idxs, labels


def sample_proposals(
    proposals: list[Tensor],
    targets: list[dict],
    matcher: Matcher,
    sampler: BalancedSampler,
    box_coder_weights: tuple[float, float, float, float],
) -> SampledRoIs:
    """Pick the RoIs the box head trains on, with their class and box targets.

    proposals: [Tensor[P_i, 4]] from the RPN; targets: [{"boxes": Tensor[G, 4], "labels": Tensor[G]}].
    The ground-truth boxes are appended to the proposals (so every object has at least one perfect RoI), each
    proposal is matched (assign_targets_to_proposals), and the sampler keeps a balanced subset per image, in
    index order. The regression target of a background RoI is computed against ground truth 0 (or a zero box
    when the image has none, giving -inf log-sizes as in the reference); the loss never reads it.
    Two host syncs for the batch: the sampler's, and how many RoIs (and positives) each image keeps.
    """
    candidates = []  # per image: (ground truth, proposals and ground truth Tensor[P_i + G, 4], matched_idxs, labels)
    for props, target in zip(proposals, targets):
        gt_boxes = target["boxes"].to(props.dtype)
        props = torch.cat((props, gt_boxes))  # (P, 4) -> (P + G, 4)
        candidates.append((gt_boxes, props, *assign_targets_to_proposals(props, gt_boxes, target["labels"], matcher)))
    if not candidates:
        return SampledRoIs([], [], [], [], [])
    pos_masks, neg_masks = sampler([lab for *_, lab in candidates])  # one draw for the batch, image by image
    chosen = [pos | neg for pos, neg in zip(pos_masks, neg_masks)]
    counts = torch.stack([torch.stack((c.sum(), p.sum())) for c, p in zip(chosen, pos_masks)]).tolist()  # (N, 2)
    rois, labels, matched_idxs, regression_targets = [], [], [], []
    for (gt_boxes, props, matched, lab), keep_mask, (count, _) in zip(candidates, chosen, counts):
        keep = true_indices(keep_mask, count)
        props, lab, matched = props[keep], lab[keep], matched[keep]
        if gt_boxes.numel() == 0:
            gt_boxes = torch.zeros((1, 4), dtype=props.dtype, device=props.device)
        rois.append(props)
        labels.append(lab)
        matched_idxs.append(matched)
        regression_targets.append(encode_boxes(gt_boxes[matched], props, box_coder_weights))
    return SampledRoIs(rois, labels, matched_idxs, regression_targets, [positive for _, positive in counts])


def positive_rois(sampled: SampledRoIs) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """The positive RoIs of each image (the only ones the mask head trains on).

    -> (rois [Tensor[P_i, 4]], labels [Tensor[P_i]], matched_idxs [Tensor[P_i]]).
    """
    rois, labels, matched = [], [], []
    counts = sampled.num_positive or [None] * len(sampled.rois)
    for r, lab, m, count in zip(sampled.rois, sampled.labels, sampled.matched_idxs, counts):
        pos = torch.where(lab > 0)[0] if count is None else true_indices(lab > 0, count)
        rois.append(r[pos])
        labels.append(lab[pos])
        matched.append(m[pos])
    return rois, labels, matched


# ----------------------------------------------------------------------------------------------------------------
# Box head
# ----------------------------------------------------------------------------------------------------------------
class TwoMLPHead(nn.Module):
    """Two fully connected layers with ReLU: pooled features Tensor[R, C, S, S] -> Tensor[R, representation_size]."""

    def __init__(self, in_channels: int, representation_size: int):
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)  # (R, C, S, S) -> (R, C*S*S)
        return F.relu(self.fc7(F.relu(self.fc6(x))))


class BoxPredictor(nn.Module):
    """Class scores and class-specific box deltas: Tensor[R, F] -> (Tensor[R, K+1], Tensor[R, (K+1)*4])."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


DETECTION_MIN_SIZE = 1e-2  # detections narrower or shorter than this (pixels) are dropped, as in the reference


def decode_predictions(
    class_logits: Tensor,
    box_regression: Tensor,
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
    box_coder_weights: tuple[float, float, float, float],
) -> tuple[list[Tensor], list[Tensor]]:
    """What the box head says about each RoI, per image: its class probabilities and its box refined for every class.

    class_logits: Tensor[R, K+1], box_regression: Tensor[R, (K+1)*4], proposals: [Tensor[R_i, 4]],
    image_sizes: [(h, w)] -> (probs [Tensor[R_i, K+1]] softmax, boxes [Tensor[R_i, K+1, 4]] each class's deltas
    decoded on the RoI and clipped to the image). Both in float32 under autocast.
    """
    num_classes = class_logits.shape[-1]
    boxes_per_image = [len(p) for p in proposals]
    rois = torch.cat(proposals) if proposals else class_logits.new_zeros((0, 4))
    pred_boxes = decode_boxes(box_regression, rois, box_coder_weights)  # float32 under autocast, as the scores
    pred_boxes = pred_boxes.reshape(len(rois), num_classes, 4)  # (R, (K+1)*4) -> (R, K+1, 4)
    pred_scores = F.softmax(upcast(class_logits), -1)
    boxes = [clip_boxes(b, size) for b, size in zip(pred_boxes.split(boxes_per_image), image_sizes)]
    return list(pred_scores.split(boxes_per_image)), boxes


def select_detections(
    probs: list[Tensor],
    boxes: list[Tensor],
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    min_size: float = DETECTION_MIN_SIZE,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Keep the confident, distinct (RoI, class) pairs of each image as its detections.

    probs: [Tensor[R_i, K+1]], boxes: [Tensor[R_i, K+1, 4]] (decode_predictions) -> (boxes [Tensor[D_i, 4]],
    scores [Tensor[D_i]], labels [Tensor[D_i] int64 in 1..K]). Every (RoI, class) pair but the background is a
    candidate; scores <= score_thresh and boxes smaller than min_size are dropped; NMS per class; the
    detections_per_img best are kept, sorted by decreasing score.
    """
    candidates = []
    for image_boxes, scores in zip(boxes, probs):
        labels = torch.arange(scores.shape[-1], device=scores.device).view(1, -1).expand_as(scores)
        # drop the background column, then every (RoI, class) pair is a candidate
        image_boxes = image_boxes[:, 1:].reshape(-1, 4)  # (R_i, K, 4) -> (R_i*K, 4)
        scores = scores[:, 1:].reshape(-1)  # (R_i, K) -> (R_i*K,)
        labels = labels[:, 1:].reshape(-1)
        candidates.append((image_boxes, scores, labels, (scores > score_thresh) & large_boxes(image_boxes, min_size)))
    counts = torch.stack([keep.sum() for *_, keep in candidates]).tolist() if candidates else []  # one host sync
    all_boxes, all_scores, all_labels = [], [], []
    for (image_boxes, scores, labels, keep), count in zip(candidates, counts):
        keep = true_indices(keep, count)
        image_boxes, scores, labels = image_boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(image_boxes, scores, labels, nms_thresh)[:detections_per_img]
        all_boxes.append(image_boxes[keep])
        all_scores.append(scores[keep])
        all_labels.append(labels[keep])
    return all_boxes, all_scores, all_labels


def postprocess_detections(
    class_logits: Tensor,
    box_regression: Tensor,
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
    box_coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    min_size: float = DETECTION_MIN_SIZE,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Turn the box head's outputs into final detections, per image: decode_predictions, then select_detections.

    class_logits: Tensor[R, K+1], box_regression: Tensor[R, (K+1)*4], proposals: [Tensor[R_i, 4]],
    image_sizes: [(h, w)] -> (boxes [Tensor[D_i, 4]], scores [Tensor[D_i]], labels [Tensor[D_i] int64 in 1..K]).

    Chain: softmax over classes; decode each class's deltas on its RoI; clip to the image; every (RoI, class)
    pair but the background becomes a candidate; drop scores <= score_thresh and boxes smaller than min_size;
    NMS per class; keep the detections_per_img best (sorted by decreasing score). The defaults are the reference's
    (the signature of notebook 07's exercise); RoIHeads passes its model's config.
    """
    probs, boxes = decode_predictions(class_logits, box_regression, proposals, image_sizes, box_coder_weights)
    return select_detections(probs, boxes, score_thresh, nms_thresh, detections_per_img, min_size)


# ----------------------------------------------------------------------------------------------------------------
# Mask head
# ----------------------------------------------------------------------------------------------------------------
class MaskHead(nn.Sequential):
    """A stack of 3x3 conv + ReLU blocks (four of 256 in the reference): Tensor[R, C, S, S] -> Tensor[R, C', S, S].

    Kaiming-normal (fan_out, ReLU) weights and zero biases, as the reference.
    """

    def __init__(self, in_channels: int, layers: tuple[int, ...]):
        blocks, channels = [], in_channels
        for out_channels in layers:
            blocks.append(nn.Sequential(nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)))
            channels = out_channels
        super().__init__(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)


class MaskPredictor(nn.Sequential):
    """2x2 stride-2 transposed conv + ReLU, then 1x1 conv to one logit map per class:
    Tensor[R, C, S, S] -> Tensor[R, K+1, 2S, 2S]. Kaiming-normal weights (fan_out, ReLU), as the reference."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int):
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2, 0)
        self.relu = nn.ReLU(inplace=True)
        self.mask_fcn_logits = nn.Conv2d(dim_reduced, num_classes, 1, 1, 0)
        for name, param in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")


def mask_probabilities(mask_logits: Tensor, labels: list[Tensor]) -> list[Tensor]:
    """Sigmoid of each detection's own class channel.

    mask_logits: Tensor[R, K+1, M, M], labels: [Tensor[D_i]] (R = sum D_i) -> [Tensor[D_i, 1, M, M]].
    """
    all_labels = torch.cat(labels)
    index = torch.arange(mask_logits.shape[0], device=mask_logits.device)
    probs = mask_logits.sigmoid()[index, all_labels][:, None]  # (R, K+1, M, M) -> (R, 1, M, M)
    return list(probs.split([len(lab) for lab in labels]))


# ----------------------------------------------------------------------------------------------------------------
# The module that ties them together
# ----------------------------------------------------------------------------------------------------------------
class RoIHeads(nn.Module):
    """Box and mask heads on top of the pooled proposals.

    box_roi_pool / mask_roi_pool: callables (features dict, boxes [Tensor[R_i, 4]], image_sizes) ->
    Tensor[R, C, S, S] (MultiScaleRoIPooler). The settings are keyword-only and have no defaults: MaskRCNN passes its
    MaskRCNNConfig's (box_* fields), the one place their values are defined.
    forward(features, proposals, image_sizes, targets) -> (detections [{boxes, labels, scores, masks Tensor[D_i, 1,
    M, M] probabilities}] in eval, [] in training; losses {"loss_classifier", "loss_box_reg", "loss_mask"} in
    training, {} in eval). Inference is `detect`, which also returns its intermediates.
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_head: nn.Module,
        box_predictor: nn.Module,
        mask_roi_pool: nn.Module,
        mask_head: nn.Module,
        mask_predictor: nn.Module,
        *,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        batch_size_per_image: int,
        positive_fraction: float,
        box_coder_weights: tuple[float, float, float, float],
        score_thresh: float,
        nms_thresh: float,
        detections_per_img: int,
    ):
        super().__init__()
        self.box_roi_pool, self.box_head, self.box_predictor = box_roi_pool, box_head, box_predictor
        self.mask_roi_pool, self.mask_head, self.mask_predictor = mask_roi_pool, mask_head, mask_predictor
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.box_coder_weights = tuple(box_coder_weights)
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img

    def box_forward(self, features: dict, rois: list[Tensor], image_sizes: list) -> tuple[Tensor, Tensor]:
        """Pool, box head, predictor: -> (class_logits Tensor[R, K+1], box_regression Tensor[R, (K+1)*4])."""
        return self.box_predictor(self.box_head(self.box_roi_pool(features, rois, image_sizes)))

    def mask_forward(self, features: dict, rois: list[Tensor], image_sizes: list) -> Tensor:
        """Pool, mask head, predictor: -> mask_logits Tensor[R, K+1, M, M]."""
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, rois, image_sizes)))

    def predict_masks(self, features: dict, boxes: list[Tensor], labels: list[Tensor], image_sizes: list
                      ) -> list[Tensor]:
        """The mask of each box for its class: boxes [Tensor[D_i, 4]], labels [Tensor[D_i]] -> [Tensor[D_i, 1, M, M]]
        probabilities (the sigmoid of the class's channel). Detections at inference; any boxes (e.g. ground truth)."""
        return mask_probabilities(self.mask_forward(features, boxes, image_sizes), labels)

    def detect(self, features: dict, proposals: list[Tensor], image_sizes: list) -> dict:
        """Inference, keeping what each step computed; per image (lists of length N):

        {"class_probs": [Tensor[P_i, K+1]], "refined_boxes": [Tensor[P_i, K+1, 4]] (every class's box, clipped),
        "detections": [{"boxes" Tensor[D_i, 4], "labels" Tensor[D_i], "scores" Tensor[D_i],
        "masks" Tensor[D_i, 1, M, M] probabilities}]}, in the resized images' coordinates.
        forward (eval), MaskRCNN.inspect and the notebooks' explorers all take their detections from here.
        """
        class_logits, box_regression = self.box_forward(features, proposals, image_sizes)
        probs, refined = decode_predictions(class_logits, box_regression, proposals, image_sizes,
                                            self.box_coder_weights)
        boxes, scores, labels = select_detections(probs, refined, self.score_thresh, self.nms_thresh,
                                                  self.detections_per_img)
        masks = self.predict_masks(features, boxes, labels, image_sizes)
        detections = [{"boxes": b, "labels": lab, "scores": s, "masks": m}
                      for b, lab, s, m in zip(boxes, labels, scores, masks)]
        return {"class_probs": probs, "refined_boxes": refined, "detections": detections}

    def losses(self, features: dict, proposals: list[Tensor], image_sizes: list, targets: list[dict]) -> dict:
        """Training: sample RoIs, then the classifier, box-regression and mask losses -> {"loss_classifier",
        "loss_box_reg", "loss_mask"}."""
        sampled = sample_proposals(proposals, targets, self.matcher, self.sampler, self.box_coder_weights)
        class_logits, box_regression = self.box_forward(features, sampled.rois, image_sizes)
        labels = torch.cat(sampled.labels)
        losses = {
            "loss_classifier": classifier_loss(class_logits, labels),
            "loss_box_reg": box_regression_loss(box_regression, labels, torch.cat(sampled.regression_targets)),
        }
        pos_rois, pos_labels, pos_matched = positive_rois(sampled)
        mask_logits = self.mask_forward(features, pos_rois, image_sizes)
        size = mask_logits.shape[-1]
        targets_m = [mask_targets(t["masks"], r, m, size) for t, r, m in zip(targets, pos_rois, pos_matched)]
        losses["loss_mask"] = mask_loss(mask_logits, torch.cat(pos_labels), torch.cat(targets_m))
        return losses

    def forward(self, features: dict, proposals: list[Tensor], image_sizes: list, targets: list[dict] | None = None):
        if self.training:
            if targets is None:
                raise ValueError("RoIHeads in training mode needs targets")
            return [], self.losses(features, proposals, image_sizes, targets)
        return self.detect(features, proposals, image_sizes)["detections"], {}
