"""COCO evaluation of Mask R-CNN predictions with pycocotools (bbox and segm), on any COCO-format dataset.

Built in notebooks/11_train_on_gpu.ipynb.

Inside the package boxes are absolute (x1, y1, x2, y2) and labels are contiguous 1..K; COCO wants boxes as
(x, y, width, height), masks as run-length encodings (RLE) and its own category ids. The conversion happens
here, at the COCO boundary, and nowhere else.

Memory at COCO scale: the model returns every detection's mask at the image's full size (100 detections of one
800 x 1333 image in float32: 427 MB). `predict_dataset` therefore converts each batch to COCO result dicts (a mask
becomes an RLE string of a few hundred bytes) as soon as it leaves the model; only those dicts are kept and, under
torchrun, gathered across processes (`merge_results`).

Shape glossary
    D      number of detections of one image
    H, W   height and width of the original image
    K      number of object classes (background excluded)
"""
import contextlib
import io
import math

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first six numbers of COCOeval.stats
IOU_TYPES = ("bbox", "segm")
IOU_NAMES = {"bbox": "box", "segm": "mask"}  # what a learner calls each iou type


def xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """boxes: Tensor[D, 4] (x1, y1, x2, y2) -> Tensor[D, 4] (x, y, width, height), the COCO box format."""
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)


def encode_masks(masks: torch.Tensor, threshold: float = 0.5) -> list[dict]:
    """masks: Tensor[D, 1, H, W] probabilities -> D COCO RLEs ({"size": [H, W], "counts": str}) of mask > threshold.

    The threshold is applied where the masks are (a GPU copies 1 byte per pixel to the host, not 2 or 4).
    """
    if masks.dim() != 4 or masks.shape[1] != 1:
        raise ValueError(f"encode_masks: masks must be Tensor[D, 1, H, W], got shape {tuple(masks.shape)}")
    binary = (masks[:, 0] > threshold).to(torch.uint8).cpu().numpy()  # (D, H, W)
    rles = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0)))  # (D, H, W) -> (H, W, D), Fortran order
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")  # bytes -> str so the result is JSON-serialisable
    return rles


def category_id_of(category_ids, label: int) -> int:
    """Map a contiguous label (1..K) to its COCO category id through the category table `category_ids`: a list
    (index = label, [0] = background) or a dict label -> id. A label outside the table (or 0) is an error naming it."""
    if label >= 1:
        try:
            return int(category_ids[label])
        except (IndexError, KeyError):
            pass
    valid = f"1..{len(category_ids) - 1}" if isinstance(category_ids, (list, tuple)) else sorted(category_ids)
    raise ValueError(f"label {label} is not in the category table (labels {valid}; 0 is the background): the model "
                     f"predicts a class the table does not have. Table: {category_ids!r:.300}")


def predictions_to_coco(predictions: list[dict], image_ids: list, category_ids,
                        mask_threshold: float = 0.5) -> list[dict]:
    """Convert model outputs into a COCO results list.

    predictions: per image {boxes Tensor[D, 4] (x1, y1, x2, y2), labels Tensor[D] (1..K), scores Tensor[D],
    optionally masks Tensor[D, 1, H, W] probabilities}; image_ids: the COCO image id of each prediction;
    category_ids: contiguous label -> COCO category id (list or dict, index 0 = background).
    Returns [{image_id, category_id, bbox [x, y, w, h], score, segmentation RLE (when masks are given)}].
    """
    if len(predictions) != len(image_ids):
        raise ValueError(f"predictions_to_coco: {len(predictions)} predictions but {len(image_ids)} image ids")
    results = []
    for pred, image_id in zip(predictions, image_ids):
        boxes = xyxy_to_xywh(pred["boxes"].detach().float().cpu()).tolist()
        labels = pred["labels"].tolist()
        scores = pred["scores"].detach().float().cpu().tolist()
        rles = encode_masks(pred["masks"].detach(), mask_threshold) if "masks" in pred else None
        for j, (box, label, score) in enumerate(zip(boxes, labels, scores)):
            result = {"image_id": image_id, "category_id": category_id_of(category_ids, label), "bbox": box,
                      "score": score}
            if rles is not None:
                result["segmentation"] = rles[j]
            results.append(result)
    return results


def per_class_ap(coco_eval: COCOeval) -> dict[int, float]:
    """AP@[.5:.95] per COCO category id from an evaluated and accumulated COCOeval (NaN: no ground truth)."""
    precision = coco_eval.eval["precision"]  # (T iou thresholds, R recall points, K classes, A areas, M max dets)
    out = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p = precision[:, :, k, 0, -1]  # area "all", the largest max-detections setting
        p = p[p > -1]
        out[cat_id] = float(p.mean()) if p.size else float("nan")
    return out


def coco_evaluate(coco_gt: COCO, results: list[dict], iou_types=IOU_TYPES, image_ids=None,
                  verbose: bool = False) -> dict:
    """Evaluate a COCO results list against ground truth with pycocotools.

    Returns {iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl": float, "per_class": {category name: AP}}}.
    Numbers are pycocotools' own (-1 where an area range has no ground truth). With no detections at all every
    AP is 0.0 (pycocotools cannot load an empty results list). verbose=True prints pycocotools' summary.
    """
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"coco_evaluate: unknown iou_type {iou_type!r}, expected one of {IOU_TYPES}")
        if iou_type == "segm" and results and "segmentation" not in results[0]:
            raise ValueError("coco_evaluate: 'segm' evaluation needs results with a 'segmentation' (RLE) field")
    image_ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted(image_ids)
    names = {c["id"]: c["name"] for c in coco_gt.loadCats(coco_gt.getCatIds())}
    metrics = {}
    for iou_type in iou_types:
        if not results:
            metrics[iou_type] = {name: 0.0 for name in METRIC_NAMES} | {"per_class": {n: 0.0 for n in names.values()}}
            continue
        with contextlib.redirect_stdout(io.StringIO()) as quiet:
            coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes adds fields in place: give it copies
            coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
            coco_eval.params.imgIds = image_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        if verbose:
            summary = [line for line in quiet.getvalue().splitlines() if line.lstrip().startswith("Average")]
            print(f"--- {iou_type} ---\n" + "\n".join(summary))
        stats = {name: float(v) for name, v in zip(METRIC_NAMES, coco_eval.stats[:6])}
        stats["per_class"] = {names[c]: ap for c, ap in per_class_ap(coco_eval).items()}
        metrics[iou_type] = stats
    return metrics


def format_metrics(metrics: dict, digits: int = 3) -> str:
    """A plain-text table of the summary metrics (rows: iou types) followed by the per-class AP table."""
    def fmt(v):
        return "  nan" if math.isnan(v) else f"{v:.{digits}f}"

    width = digits + 3
    lines = ["type  " + " ".join(f"{n:>{width}}" for n in METRIC_NAMES)]
    for iou_type, m in metrics.items():
        lines.append(f"{iou_type:<5} " + " ".join(f"{fmt(m[n]):>{width}}" for n in METRIC_NAMES))
    classes = list(next(iter(metrics.values()))["per_class"]) if metrics else []
    if classes:
        name_width = max(len("class"), *(len(c) for c in classes))
        lines.append("")
        lines.append(f"{'class':<{name_width}} " + " ".join(f"{t + ' AP':>{width + 3}}" for t in metrics))
        for c in classes:
            cells = " ".join(f"{fmt(m['per_class'][c]):>{width + 3}}" for m in metrics.values())
            lines.append(f"{c:<{name_width}} {cells}")
    return "\n".join(lines)


@torch.no_grad()
def predict_dataset(model, loader, device, category_ids, mask_threshold: float = 0.5) -> tuple[list[dict], list]:
    """Run `model` (eval mode) over a loader of (images, targets) batches, keeping only COCO result dicts.

    Each batch's outputs are converted (predictions_to_coco: boxes to xywh, masks RLE-encoded at mask_threshold,
    labels mapped through the category table `category_ids`) and dropped before the next batch runs, so memory grows
    with the number of detections, not with detections x image size. An image id seen before is skipped (a
    DistributedSampler repeats images to even out the processes' shares).
    Returns (results, image ids in loader order, each once). Built in notebooks/11_train_on_gpu.ipynb.
    """
    model.eval()
    results, image_ids, seen = [], [], set()
    for images, targets in loader:
        outputs = model([img.to(device) for img in images])
        for out, target in zip(outputs, targets):
            image_id = int(target["image_id"])
            if image_id not in seen:
                results += predictions_to_coco([out], [image_id], category_ids, mask_threshold)
                image_ids.append(image_id)
                seen.add(image_id)
        del outputs  # the batch's full-size masks go before the next batch's arrive
    return results, image_ids


def merge_results(parts: list[tuple[list[dict], list]]) -> tuple[list[dict], list]:
    """Join the (results, image_ids) of several processes (predict_dataset on each): every image's results once,
    from the first process that has the image. -> (results, image_ids)."""
    results, image_ids, seen = [], [], set()
    for part_results, part_ids in parts:
        new = set(part_ids) - seen
        results += [r for r in part_results if r["image_id"] in new]
        image_ids += [i for i in part_ids if i in new]
        seen |= new
    return results, image_ids


def evaluate_predictions(dataset, predictions: list[dict], image_ids: list, iou_types=IOU_TYPES, verbose=False) -> dict:
    """COCO metrics of a list of model outputs on a CocoDataset-like `dataset` (attributes .coco and .category_ids).

    For a few images (notebooks); a whole dataset goes through predict_dataset, which keeps no masks.
    """
    results = predictions_to_coco(predictions, image_ids, dataset.category_ids)
    return coco_evaluate(dataset.coco, results, iou_types, image_ids=image_ids, verbose=verbose)
