"""COCO evaluation: our conversion + pycocotools must equal pycocotools fed by hand."""
import contextlib
import io
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from minimaskrcnn.evaluation import (
    coco_evaluate,
    encode_masks,
    format_metrics,
    predictions_to_coco,
    xyxy_to_xywh,
)

H, W = 40, 50
CATEGORY_IDS = [0, 7, 3]  # contiguous label 1 -> COCO id 7, label 2 -> COCO id 3 (deliberately not 1..K)


def rect_mask(x1, y1, x2, y2):
    m = np.zeros((H, W), dtype=np.uint8)
    m[y1:y2, x1:x2] = 1
    return m


def make_gt():
    """Two images; image 10 has a 'square' and a 'disc', image 20 a 'square'."""
    anns, objects = [], [(10, 7, (5, 5, 20, 25)), (10, 3, (25, 10, 45, 30)), (20, 7, (2, 3, 30, 35))]
    for i, (img, cat, (x1, y1, x2, y2)) in enumerate(objects, start=1):
        rle = mask_util.encode(np.asfortranarray(rect_mask(x1, y1, x2, y2)))
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append({"id": i, "image_id": img, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1],
                     "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0, "segmentation": rle})
    coco = COCO()
    coco.dataset = {"images": [{"id": 10, "height": H, "width": W, "file_name": "a.png"},
                               {"id": 20, "height": H, "width": W, "file_name": "b.png"}],
                    "categories": [{"id": 7, "name": "square"}, {"id": 3, "name": "disc"}],
                    "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def make_predictions():
    """Model-style outputs: xyxy boxes, contiguous labels, mask probabilities (one slightly off, one wrong class)."""
    def probs(*rects):
        return torch.stack([torch.from_numpy(rect_mask(*r)).float() * 0.9 + 0.05 for r in rects])[:, None]

    p10 = {"boxes": torch.tensor([[5.0, 5, 20, 25], [26, 12, 44, 30], [0, 0, 10, 10]]),
           "labels": torch.tensor([1, 2, 2]), "scores": torch.tensor([0.9, 0.8, 0.3]),
           "masks": probs((5, 5, 20, 25), (26, 12, 44, 30), (0, 0, 10, 10))}
    p20 = {"boxes": torch.tensor([[4.0, 3, 30, 33], [2, 3, 30, 35]]), "labels": torch.tensor([1, 2]),
           "scores": torch.tensor([0.7, 0.6]), "masks": probs((4, 3, 30, 33), (2, 3, 30, 35))}
    return [p10, p20], [10, 20]


def direct_results():
    """The same detections written as COCO results by hand."""
    rows = [(10, 7, (5, 5, 20, 25), 0.9), (10, 3, (26, 12, 44, 30), 0.8), (10, 3, (0, 0, 10, 10), 0.3),
            (20, 7, (4, 3, 30, 33), 0.7), (20, 3, (2, 3, 30, 35), 0.6)]
    out = []
    for img, cat, (x1, y1, x2, y2), score in rows:
        rle = mask_util.encode(np.asfortranarray(rect_mask(x1, y1, x2, y2)))
        out.append({"image_id": img, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score,
                    "segmentation": rle})
    return out


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_matches_pycocotools_called_directly(iou_type):
    coco = make_gt()
    preds, ids = make_predictions()
    ours = coco_evaluate(coco, predictions_to_coco(preds, ids, CATEGORY_IDS), iou_types=(iou_type,))[iou_type]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(direct_results()), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    expected = dict(zip(["AP", "AP50", "AP75", "APs", "APm", "APl"], ev.stats[:6]))
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name
    assert 0 < ours["AP"] < 1  # the case is neither perfect nor empty
    # per-class AP from the precision array, computed here independently
    prec = ev.eval["precision"]
    for k, (cat, name) in enumerate([(3, "disc"), (7, "square")]):
        assert ev.params.catIds[k] == cat
        p = prec[:, :, k, 0, -1]
        assert ours["per_class"][name] == pytest.approx(p[p > -1].mean())


def test_conversions():
    assert xyxy_to_xywh(torch.tensor([[1.0, 2, 4, 8]])).tolist() == [[1, 2, 3, 6]]
    m = torch.zeros(1, 1, 6, 5)
    m[0, 0, 1:3, 2:4] = 0.7
    m[0, 0, 4, 0] = 0.5  # exactly the threshold: not part of the mask
    (rle,) = encode_masks(m)
    assert isinstance(rle["counts"], str)
    decoded = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert decoded.sum() == 4 and decoded[1:3, 2:4].all()
    with pytest.raises(ValueError, match="label 5"):
        predictions_to_coco([{"boxes": torch.zeros(1, 4), "labels": torch.tensor([5]), "scores": torch.ones(1)}],
                            [1], CATEGORY_IDS)


def test_perfect_and_empty_predictions():
    coco = make_gt()
    gt = [{"boxes": torch.tensor([[5.0, 5, 20, 25], [25, 10, 45, 30]]), "labels": torch.tensor([1, 2]),
           "scores": torch.ones(2)}, {"boxes": torch.tensor([[2.0, 3, 30, 35]]), "labels": torch.tensor([1]),
                                      "scores": torch.ones(1)}]
    m = coco_evaluate(coco, predictions_to_coco(gt, [10, 20], CATEGORY_IDS), iou_types=("bbox",))
    assert m["bbox"]["AP"] == pytest.approx(1.0) and m["bbox"]["per_class"]["disc"] == pytest.approx(1.0)
    empty = coco_evaluate(coco, [], iou_types=("bbox", "segm"))
    assert empty["segm"]["AP"] == 0.0
    table = format_metrics(m)
    assert "square" in table and "1.000" in table and not math.isnan(m["bbox"]["AP50"])
