"""Parity with torchvision's maskrcnn_resnet50_fpn, stage by stage (reference venv only; skipped elsewhere).

Both models carry the same randomly initialised weights (converted with minimaskrcnn.weights.to/from_torchvision).
Every stage is compared on torchvision's *input to that stage*, so a difference points at the stage that makes
it instead of spreading downstream; one last test runs the two models end to end.

Run with: .venv-reference/bin/python -m pytest -m reference tests/test_parity.py   (or `make test-reference`)
"""
import matplotlib.cbook
import matplotlib.image
import pytest
import torch

torchvision = pytest.importorskip("torchvision")
from torchvision.models.detection import maskrcnn_resnet50_fpn  # noqa: E402
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste_masks_in_image  # noqa: E402
from torchvision.models.detection.rpn import concat_box_prediction_layers  # noqa: E402
from torchvision.ops.misc import FrozenBatchNorm2d as TvFrozenBatchNorm2d  # noqa: E402

from minimaskrcnn.masks import paste_masks_in_image  # noqa: E402
from record_golden import freeze_batch_norms  # noqa: E402  (tests/ is on sys.path under pytest)
from minimaskrcnn.model import build_model  # noqa: E402
from minimaskrcnn.roi_heads import mask_probabilities, postprocess_detections  # noqa: E402
from minimaskrcnn.rpn import filter_proposals  # noqa: E402
from minimaskrcnn.weights import from_torchvision, set_frozen_bn_eps  # noqa: E402

pytestmark = pytest.mark.reference

# Smaller than the reference 800 / 1333 so the suite stays quick on a CPU; the code paths are the same (the
# end-to-end test also runs the reference sizes). Images are both up- and down-scaled, and one is capped by
# max_size.
MIN_SIZE, MAX_SIZE = 320, 512
OUR_LEVELS = ("p2", "p3", "p4", "p5", "pool")


def parity_images() -> list[torch.Tensor]:
    """Four images of different sizes and aspect ratios: a photo, a wide crop, a small resize, a synthetic one."""
    photo = matplotlib.image.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))  # (600, 512, 3) uint8
    photo = torch.from_numpy(photo.copy()).permute(2, 0, 1).float() / 255  # (H, W, 3) -> (3, H, W)
    wide = photo[:, 180:380, :]  # 200 x 512: the long side caps the scale
    small = torch.nn.functional.interpolate(photo[None], size=(97, 131), mode="bilinear", align_corners=False)[0]
    generator = torch.Generator().manual_seed(0)
    synthetic = torch.rand(3, 150, 90, generator=generator) * 0.2  # tall, noisy background ...
    synthetic[0, 20:70, 10:60] = 0.9  # ... with a red square
    synthetic[2, 90:140, 30:85] = 0.8  # ... and a blue rectangle
    return [photo, wide, small.clamp(0, 1), synthetic]


@torch.no_grad()
def reference_model(images: list[torch.Tensor], **kwargs) -> torch.nn.Module:
    """torchvision's Mask R-CNN with random weights that give a spread of scores, in eval mode.

    The norms' statistics come from a training-mode pass of the backbone over the images (so activations stay
    O(1) through the 50 layers), then every norm is frozen as in torchvision's COCO model. The objectness and
    class-score weights are scaled up so that scores differ clearly and some detections pass the 0.05 threshold.
    Not further: a sigmoid saturated at 1.0 makes many equal scores, and the order of equal scores is left to the
    sort inside NMS (torchvision's is not stable, ours is), which then decides which of two tied boxes survives.
    """
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kwargs)
    body = model.backbone.body
    for m in body.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.2)
    body.train()
    for image in images:
        body(model.transform([image])[0].tensors)
    freeze_batch_norms(model, TvFrozenBatchNorm2d)
    model.rpn.head.cls_logits.weight.mul_(10)  # logits up to ~16: spread out, sigmoid not saturated at 1.0
    model.roi_heads.box_predictor.cls_score.weight.mul_(3)
    model.roi_heads.box_predictor.bbox_pred.weight.mul_(3)
    return model.eval()


def our_model(reference: torch.nn.Module, **overrides) -> torch.nn.Module:
    model = build_model("r50_fpn", 91, **overrides)
    model.load_state_dict(from_torchvision(reference.state_dict()), strict=True)
    return model.eval()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shapes differ: ours {tuple(a.shape)} vs torchvision {tuple(b.shape)}"
    return 0.0 if a.numel() == 0 else (a.double() - b.double()).abs().max().item()


def assert_close(stage: str, ours: torch.Tensor, theirs: torch.Tensor, atol: float, rtol: float = 0.0) -> float:
    """Check |ours - theirs| <= atol + rtol * |theirs| elementwise; prints and returns the max abs diff."""
    diff = max_abs_diff(ours, theirs)
    scale = theirs.double().abs().max().item() if theirs.numel() else 0.0
    print(f"{stage}: max abs diff {diff:.3g} (values up to {scale:.3g})")
    bad = (ours.double() - theirs.double()).abs() > atol + rtol * theirs.double().abs()
    assert not bad.any(), f"{stage}: {int(bad.sum())} of {bad.numel()} values differ; max abs diff {diff:.3g}"
    return diff


@pytest.fixture(scope="module")
def run():
    """Both models and torchvision's intermediate results on the parity images (one batch), computed once."""
    images = parity_images()
    reference = reference_model(images, min_size=MIN_SIZE, max_size=MAX_SIZE)
    ours = our_model(reference, min_size=MIN_SIZE, max_size=MAX_SIZE)
    r = {"images": images, "tv": reference, "ours": ours}
    with torch.no_grad():
        image_list, _ = reference.transform(images)
        r["batch"], r["image_sizes"] = image_list.tensors, [tuple(s) for s in image_list.image_sizes]
        features = reference.backbone(r["batch"])
        r["features"] = dict(zip(OUR_LEVELS, features.values()))  # '0'..'3','pool' -> p2..p5, pool
        r["objectness"], r["rpn_deltas"] = reference.rpn.head(list(features.values()))
        r["anchors"] = reference.rpn.anchor_generator(image_list, list(features.values()))
        r["proposals"], _ = reference.rpn(image_list, features)
        heads = reference.roi_heads
        box_features = heads.box_head(heads.box_roi_pool(features, r["proposals"], image_list.image_sizes))
        r["class_logits"], r["box_regression"] = heads.box_predictor(box_features)
        r["det_boxes"], r["det_scores"], r["det_labels"] = heads.postprocess_detections(
            r["class_logits"], r["box_regression"], r["proposals"], image_list.image_sizes
        )
        r["mask_logits"] = heads.mask_predictor(
            heads.mask_head(heads.mask_roi_pool(features, r["det_boxes"], image_list.image_sizes))
        )
        r["detections"] = reference(images)
    return r


def test_state_dict_round_trip(run):
    """Every torchvision parameter lands in our model unchanged (strict load happened in the fixture)."""
    theirs = {k: v for k, v in run["tv"].state_dict().items()}
    ours = run["ours"].state_dict()
    converted = from_torchvision(theirs)
    assert set(converted) == set(ours)
    for name, value in converted.items():
        assert torch.equal(ours[name], value), name


def test_reference_is_not_degenerate(run):
    """The check below only means something if the reference produces varied detections on every image."""
    for i, det in enumerate(run["detections"]):
        assert len(det["boxes"]) >= 5, f"image {i}: only {len(det['boxes'])} reference detections"
        assert det["scores"].max() - det["scores"].min() > 0.05, f"image {i}: scores all equal"
        assert len(det["labels"].unique()) >= 2, f"image {i}: a single label"


@torch.no_grad()
def test_transform(run):
    """Normalise, resize (scale rounding, recompute_scale_factor), pad to a multiple of 32."""
    batch, image_sizes, _ = run["ours"].transform(run["images"])
    assert [tuple(s) for s in image_sizes] == run["image_sizes"]
    assert_close("transform: padded batch", batch, run["batch"], atol=1e-5)


@torch.no_grad()
def test_backbone_fpn(run):
    features = run["ours"].backbone(run["batch"])
    assert list(features) == list(OUR_LEVELS)
    for level in OUR_LEVELS:
        assert_close(f"backbone+FPN {level}", features[level], run["features"][level], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_anchors(run):
    feature_sizes = [tuple(f.shape[-2:]) for f in run["features"].values()]
    anchors = run["ours"].rpn.anchor_generator(tuple(run["batch"].shape[-2:]), feature_sizes, device=None)
    assert_close("anchors", torch.cat(anchors), run["anchors"][0], atol=0)


@torch.no_grad()
def test_rpn_head(run):
    logits, deltas = run["ours"].rpn.head(list(run["features"].values()))
    for level, ours_l, theirs_l in zip(OUR_LEVELS, logits, run["objectness"]):
        assert_close(f"RPN objectness {level}", ours_l, theirs_l, atol=1e-4, rtol=1e-4)
    for level, ours_l, theirs_l in zip(OUR_LEVELS, deltas, run["rpn_deltas"]):
        assert_close(f"RPN deltas {level}", ours_l, theirs_l, atol=1e-4, rtol=1e-4)


def by_score(boxes: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort by decreasing score, equal scores by their box: an order that does not depend on how ties were sorted."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i].item(), *boxes[i].tolist()))
    return boxes[order], scores[order]


@torch.no_grad()
def test_rpn_proposals(run):
    """Decode, per-level top-n, clip, min size, per-level NMS, post-NMS top-n: the same proposals and scores.

    Compared in (score, box) order, so proposals with equal scores may come in either order (see reference_model).
    """
    ours, tv_rpn = run["ours"].rpn, run["tv"].rpn
    features = list(run["features"].values())
    _, level_sizes, objectness, _, proposals = ours.predict(features, tuple(run["batch"].shape[-2:]))
    boxes, scores = filter_proposals(proposals, objectness, level_sizes, run["image_sizes"], ours.pre_nms_top_n(),
                                     ours.post_nms_top_n(), ours.nms_thresh, ours.min_size, ours.score_thresh)
    logits, deltas = concat_box_prediction_layers(run["objectness"], run["rpn_deltas"])  # torchvision's own path
    tv_proposals = tv_rpn.box_coder.decode(deltas, run["anchors"]).view(len(run["anchors"]), -1, 4)
    assert_close("RPN decoded anchors (all)", proposals, tv_proposals, atol=1e-3)
    tv_boxes, tv_scores = tv_rpn.filter_proposals(tv_proposals, logits, run["image_sizes"], level_sizes)
    for i in range(len(boxes)):
        assert len(boxes[i]) == len(tv_boxes[i]), f"image {i}: {len(boxes[i])} proposals vs torchvision's {len(tv_boxes[i])}"
        (b, s), (tb, ts) = by_score(boxes[i], scores[i]), by_score(tv_boxes[i], tv_scores[i])
        assert_close(f"RPN proposal scores image {i}", s, ts, atol=1e-6)
        assert_close(f"RPN proposals image {i}", b, tb, atol=1e-3)
    forward_boxes, losses = ours(features, run["image_sizes"], tuple(run["batch"].shape[-2:]), None)
    assert losses == {} and all(torch.equal(a, b) for a, b in zip(forward_boxes, boxes))


@torch.no_grad()
def test_box_head(run):
    """MultiScaleRoIPooler (levels, scales, sampling 2, aligned False) + two FC + predictor, on the same proposals."""
    class_logits, box_regression = run["ours"].roi_heads.box_forward(
        run["features"], run["proposals"], run["image_sizes"]
    )
    assert_close("box head class logits", class_logits, run["class_logits"], atol=1e-3, rtol=1e-4)
    assert_close("box head box regression", box_regression, run["box_regression"], atol=1e-3, rtol=1e-4)


@torch.no_grad()
def test_box_postprocess(run):
    """Softmax, class-specific decoding (10, 10, 5, 5), clip, score > 0.05, min size, per-class NMS, top 100."""
    heads = run["ours"].roi_heads
    boxes, scores, labels = postprocess_detections(
        run["class_logits"], run["box_regression"], run["proposals"], run["image_sizes"],
        heads.box_coder_weights, heads.score_thresh, heads.nms_thresh, heads.detections_per_img,
    )
    for i in range(len(boxes)):
        assert torch.equal(labels[i], run["det_labels"][i]), f"image {i}: labels differ"
        assert_close(f"detections (resized image) boxes image {i}", boxes[i], run["det_boxes"][i], atol=1e-3)
        assert_close(f"detections (resized image) scores image {i}", scores[i], run["det_scores"][i], atol=1e-4)


@torch.no_grad()
def test_mask_head(run):
    mask_logits = run["ours"].roi_heads.mask_forward(run["features"], run["det_boxes"], run["image_sizes"])
    assert_close("mask head logits", mask_logits, run["mask_logits"], atol=1e-3, rtol=1e-4)
    probs = mask_probabilities(run["mask_logits"], run["det_labels"])
    index = torch.arange(len(run["mask_logits"]))
    theirs = run["mask_logits"].sigmoid()[index, torch.cat(run["det_labels"])][:, None]
    assert_close("mask probabilities of the detected class", torch.cat(probs), theirs, atol=1e-6)


@torch.no_grad()
def test_mask_paste(run):
    """28 x 28 -> padded 30 x 30, box expanded by 30/28 and truncated, bilinear resize, pasted."""
    generator = torch.Generator().manual_seed(1)
    for i, det in enumerate(run["detections"]):
        boxes = det["boxes"]
        masks = torch.rand(len(boxes), 1, 28, 28, generator=generator)
        size = tuple(run["images"][i].shape[-2:])
        ours = paste_masks_in_image(masks, boxes, size)
        theirs = tv_paste_masks_in_image(masks, boxes, size, padding=1)
        assert_close(f"pasted masks image {i}", ours, theirs, atol=1e-6)


def compare_detections(ours: list[dict], theirs: list[dict], where: str) -> None:
    for i, (d, e) in enumerate(zip(ours, theirs)):
        assert len(d["boxes"]) == len(e["boxes"]), f"{where} image {i}: {len(d['boxes'])} vs {len(e['boxes'])}"
        assert torch.equal(d["labels"], e["labels"]), f"{where} image {i}: labels differ"
        assert_close(f"{where} boxes image {i}", d["boxes"], e["boxes"], atol=1e-3)
        assert_close(f"{where} scores image {i}", d["scores"], e["scores"], atol=1e-4)
        ours_bin, theirs_bin = d["masks"] > 0.5, e["masks"] > 0.5
        # RoIAlign agrees to ~1e-5, not bit for bit, so a pixel whose probability is 0.5 to within float noise
        # may land on either side; any other differing pixel is a real difference.
        borderline = (e["masks"] - 0.5).abs() < 1e-4
        differing = int((ours_bin != theirs_bin).sum())
        real = int(((ours_bin != theirs_bin) & ~borderline).sum())
        print(f"{where} masks image {i}: {differing} of {ours_bin.numel()} pixels differ after > 0.5, "
              f"{real} of them not within 1e-4 of 0.5; max abs diff of probabilities "
              f"{max_abs_diff(d['masks'], e['masks']):.3g}")
        assert real == 0, f"{where} image {i}: {real} mask pixels differ after thresholding at 0.5"


@torch.no_grad()
def test_end_to_end(run):
    """The whole model, images in, detections in original coordinates out, on the batch of four images."""
    compare_detections(run["ours"](run["images"]), run["detections"], "end to end")


@torch.no_grad()
def test_end_to_end_reference_sizes():
    """One image at the reference sizes (800 / 1333), and frozen-norm eps 0 as torchvision's COCO weights use."""
    image = parity_images()[0]
    reference = reference_model([image])
    ours = our_model(reference)
    for m in reference.modules():
        if isinstance(m, TvFrozenBatchNorm2d):
            m.eps = 0.0
    assert set_frozen_bn_eps(ours, 0.0) == 53
    compare_detections(ours([image]), reference([image]), "end to end 800 px, eps 0")
