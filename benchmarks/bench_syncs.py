"""Host-device synchronisations per stage: one training step and one inference of r50_fpn on 2 images, ours vs torchvision.

    .venv/bin/python benchmarks/bench_syncs.py                  # ours only (torchvision does not import)
    .venv-reference/bin/python benchmarks/bench_syncs.py        # ours and torchvision's maskrcnn_resnet50_fpn
    python benchmarks/bench_syncs.py --image-size 320 --sites   # also list where each sync happens (file:line)

Counts the operations that make the host wait for the GPU (minimaskrcnn.syncs.SYNC_KINDS: nonzero, boolean-mask
indexing, .item(), bool(tensor), torch.equal, tolist, ...) with minimaskrcnn.syncs.SyncCounter, on the CPU: which
operations wait does not depend on the device. The training step is the forward pass and loss.backward(); inference
is one forward pass under torch.no_grad(). Both models carry the same seeded random weights (converted with
minimaskrcnn.weights.to_torchvision) with the RPN objectness and class scores scaled up, as tests/test_parity.py does,
so that there are detections to post-process. torchvision's compiled nms counts once per call ("torchvision nms"):
its CUDA kernel copies the overlap mask to the host. Tensors that would stay on the host in a GPU run (made without a
device, or by .cpu()) are followed and their calls not counted (see minimaskrcnn.syncs).

Measured on this project's 2-core CPU, 2026-12-01, defaults (2 images 320 x 320 and 240 x 320), train step / inference:
    torch 2.15.0+cu132 (.venv-reference), same run:  ours 55 / 36   torchvision 71 / 2904   (before the second pass)
    torch 2.13.0+cpu (.venv), after the second pass:  ours 8 / 8
    ours before issue 20 (commit 8630352; torch 2.13): 317 / 330, of which RPN 237 / 151 (101 / 67 torch.equal of NMS
    rounds, 132 / 80 boolean-mask indexings), sampling 30 / 0, losses 13 / 0, post-processing 0 / 162 (NMS: 60
    torch.equal, 88 boolean-mask indexings); after the first pass (boxes, matching, rpn, anchors, losses): 59 / 36.
Per stage now (torch 2.13), train: input checks 2, rpn 1, sampling 3, losses 2 (mask targets' adaptive RoIAlign,
once per image); inference: input checks 1, rpn 1, post-processing 6 (candidate count 1, batched_nms 4: two
NMS_SEGMENTs per image for this random model's 2000-3000 candidates, mask pasting 1); every other stage 0.
torchvision's inference count is its mask pasting: int(box[...]) and tensor-bounded slices per detection (about 14
per detection).
"""
import argparse

import torch

from minimaskrcnn import build_model
from minimaskrcnn.syncs import inference_syncs, maskrcnn_stages, train_step_syncs


def make_inputs(image_size: int):
    """Two images (image_size^2 and 3/4 of it high), noise with bright rectangles, and their targets (fixed)."""
    generator = torch.Generator().manual_seed(0)
    sizes = [(image_size, image_size), (image_size * 3 // 4, image_size)]
    objects = [[(1, (0.10, 0.15, 0.45, 0.60)), (7, (0.50, 0.40, 0.90, 0.85))],
               [(3, (0.20, 0.10, 0.70, 0.50)), (18, (0.05, 0.55, 0.30, 0.95)), (62, (0.60, 0.60, 0.95, 0.90))]]
    images, targets = [], []
    for (height, width), objs in zip(sizes, objects):
        image = torch.rand(3, height, width, generator=generator) * 0.3
        boxes, masks = [], torch.zeros(len(objs), height, width, dtype=torch.uint8)
        for i, (_, (x1, y1, x2, y2)) in enumerate(objs):
            box = [round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height)]
            image[i % 3, box[1]:box[3], box[0]:box[2]] = 0.9
            masks[i, box[1]:box[3], box[0]:box[2]] = 1
            boxes.append(box)
        images.append(image)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "labels": torch.tensor([label for label, _ in objs]), "masks": masks})
    return images, targets


def our_model(image_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("r50_fpn", 91, min_size=image_size, max_size=image_size)
    with torch.no_grad():  # spread the scores out so that proposals differ and detections pass score_thresh
        model.rpn.head.cls_logits.weight.mul_(10)
        model.roi_heads.box_predictor.cls_score.weight.mul_(3)
        model.roi_heads.box_predictor.bbox_pred.weight.mul_(3)
    return model


def torchvision_model(ours: torch.nn.Module, image_size: int):
    """torchvision's maskrcnn_resnet50_fpn with our weights and frozen norms, and its stages; None without torchvision."""
    try:
        from torchvision.models.detection import generalized_rcnn, maskrcnn_resnet50_fpn, roi_heads, rpn, transform
        from torchvision.models.detection import _utils as det_utils
        from torchvision.models.detection.backbone_utils import BackboneWithFPN
        from torchvision.ops import MultiScaleRoIAlign, misc
    except ImportError:
        return None, None
    from minimaskrcnn.weights import to_torchvision

    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=image_size,
                                  max_size=image_size)
    for parent in list(model.modules()):  # frozen norms, as ours and torchvision's COCO model (no batch statistics)
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.BatchNorm2d):
                setattr(parent, name, misc.FrozenBatchNorm2d(child.num_features, eps=child.eps))
    model.load_state_dict(to_torchvision(ours.state_dict()))
    stages = {
        generalized_rcnn.GeneralizedRCNN.forward: "input checks",
        transform.GeneralizedRCNNTransform.forward: "transform",
        BackboneWithFPN: "backbone",
        rpn.RegionProposalNetwork.forward: "rpn",
        rpn.RegionProposalNetwork.assign_targets_to_anchors: "sampling",
        det_utils.Matcher.__call__: "sampling",
        det_utils.BalancedPositiveNegativeSampler.__call__: "sampling",
        roi_heads.RoIHeads.select_training_samples: "sampling",
        MultiScaleRoIAlign: "roi pooling",
        roi_heads.RoIHeads.forward: "heads",
        rpn.RegionProposalNetwork.compute_loss: "losses",
        roi_heads.fastrcnn_loss: "losses",
        roi_heads.maskrcnn_loss: "losses",
        roi_heads.RoIHeads.postprocess_detections: "post-processing",
        roi_heads.maskrcnn_inference: "post-processing",
        transform.GeneralizedRCNNTransform.postprocess: "post-processing",
        torch.autograd.backward: "backward",
    }
    return model, stages


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=320, help="long side of the two images (default 320)")
    parser.add_argument("--sites", action="store_true", help="list where each sync happens (file:line)")
    args = parser.parse_args()
    images, targets = make_inputs(args.image_size)
    ours = our_model(args.image_size)
    runs = {"ours": (ours, maskrcnn_stages())}
    theirs, their_stages = torchvision_model(ours, args.image_size)
    if theirs is None:
        print("torchvision does not import here: its maskrcnn_resnet50_fpn is skipped "
              "(run with .venv-reference/bin/python to count it too)")
    else:
        runs["torchvision"] = (theirs, their_stages)
    print(f"torch {torch.__version__}; r50_fpn, 91 classes, 2 images {[tuple(i.shape[-2:]) for i in images]}\n")
    totals = {}
    for name, (model, stages) in runs.items():
        train = train_step_syncs(model, images, targets, stages)
        infer, detections = inference_syncs(model, images, stages)
        found = sum(len(d["boxes"]) for d in detections)
        totals[name] = (train.total(), infer.total())
        print(train.table(f"{name}: train step"), "\n")
        print(infer.table(f"{name}: inference ({found} detections)"), "\n")
        if args.sites:
            for title, counter in (("train", train), ("inference", infer)):
                print(f"{name}, {title}: where")
                for (stage, kind, site), n in sorted(counter.sites.items(), key=lambda item: (item[0][0], -item[1])):
                    print(f"  {stage:<16} {kind:<16} {n:>4}  {site}")
                print()
    print("totals (train step, inference):", ", ".join(f"{name} {t} / {i}" for name, (t, i) in totals.items()))


if __name__ == "__main__":
    main()
