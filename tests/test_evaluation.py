"""COCO evaluation: our conversion + pycocotools must equal pycocotools fed by hand."""
import contextlib
import io
import math
import tracemalloc

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from minimaskrcnn import engine
from minimaskrcnn.evaluation import (
    coco_evaluate,
    encode_masks,
    format_metrics,
    merge_results,
    predict_dataset,
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
    for label, table in [(5, CATEGORY_IDS), (3, CATEGORY_IDS), (0, CATEGORY_IDS), (-1, CATEGORY_IDS), (2, {1: 7})]:
        with pytest.raises(ValueError, match=rf"label {label} is not in the category table"):
            prediction = {"boxes": torch.zeros(1, 4), "labels": torch.tensor([label]), "scores": torch.ones(1)}
            predictions_to_coco([prediction], [1], table)


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


# ------------------------------------------------------------------------------------------ whole datasets
@pytest.fixture
def one_thread():
    """Single-threaded torch: on a shared, loaded CPU many small ops run much faster without thread hand-offs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class StubModel(torch.nn.Module):
    """Returns `detections` full-size masks per image (random rectangles, probability 0.9 inside, 0.05 outside),
    allocated through numpy so that tracemalloc sees them, as it sees everything evaluation keeps."""

    def __init__(self, detections, labels=(1, 2)):
        super().__init__()
        self.detections, self.labels = detections, torch.tensor(labels)
        self.rng = np.random.default_rng(0)

    def forward(self, images):
        outputs = []
        for image in images:
            h, w = image.shape[-2:]
            d = self.detections
            xs = np.sort(self.rng.integers(0, w, size=(d, 2)), axis=1)  # (D, 2): x1 <= x2
            ys = np.sort(self.rng.integers(0, h, size=(d, 2)), axis=1)
            boxes = np.stack((xs[:, 0], ys[:, 0], xs[:, 1] + 1, ys[:, 1] + 1), axis=1)  # (D, 4) (x1, y1, x2, y2)
            masks = np.full((d, 1, h, w), 0.05, dtype=np.float32)
            for m, (x1, y1, x2, y2) in zip(masks, boxes.tolist()):
                m[0, y1:y2, x1:x2] = 0.9
            boxes = torch.from_numpy(boxes.astype(np.float32))
            outputs.append({"boxes": boxes, "labels": self.labels[torch.arange(d) % len(self.labels)],
                            "scores": torch.linspace(1, 0.1, d), "masks": torch.from_numpy(masks)})
        return outputs


def stub_loader(num_images, size, batch_size=4, repeat_first=0):
    """(images, targets) batches; image ids 1..num_images, then the first `repeat_first` again (as a padded
    DistributedSampler would)."""
    ids = list(range(1, num_images + 1)) + list(range(1, repeat_first + 1))
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        yield [torch.zeros(3, *size) for _ in batch], [{"image_id": torch.tensor(i)} for i in batch]


def test_predict_dataset_keeps_result_dicts_not_masks(one_thread):
    """300 images x 16 full-size masks: the peak memory of predict_dataset is what its COCO results weigh plus at most
    three batches of masks (measured: results 4.4 MB, peak 6.3 MB, a batch 1.6 MB). Keeping the masks until the end,
    as evaluation used to, costs 300 x 16 x H x W x 4 bytes = 118 MB (measured peak of that way: 122 MB)."""
    num_images, detections, size, batch_size = 300, 16, (64, 96), 4
    batch_masks = batch_size * detections * size[0] * size[1] * 4  # bytes of one batch's float32 masks
    keep_masks = num_images * detections * size[0] * size[1] * 4
    model = StubModel(detections)
    tracemalloc.start()
    try:
        kept = [model([torch.zeros(3, *size)])[0] for _ in range(5)]  # the instrument sees masks that are kept
        assert tracemalloc.get_traced_memory()[0] >= 5 * detections * size[0] * size[1] * 4
        del kept
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        results, ids = predict_dataset(model, stub_loader(num_images, size, batch_size), "cpu", CATEGORY_IDS)
        retained, peak = (m - before for m in tracemalloc.get_traced_memory())
    finally:
        tracemalloc.stop()
    assert len(results) == num_images * detections and ids == list(range(1, num_images + 1))
    # bytes per detection (measured ~900): a dict with a box, a score and an RLE string; its mask was 24,576 bytes
    assert retained / len(results) < 2000
    bound = retained + 3 * batch_masks
    assert peak <= bound, f"peak {peak / 1e6:.1f} MB > {bound / 1e6:.1f} MB"
    assert keep_masks > 10 * bound


def test_predict_dataset_equals_predictions_to_coco_and_skips_repeated_images():
    size = (30, 40)
    results, ids = predict_dataset(StubModel(5), stub_loader(6, size, batch_size=4, repeat_first=2), "cpu",
                                   CATEGORY_IDS)
    assert ids == [1, 2, 3, 4, 5, 6]  # images 1 and 2 came twice: counted once
    model = StubModel(5)  # the same random stream: the same detections
    outputs = [out for images, _ in stub_loader(6, size, batch_size=4) for out in model(images)]
    assert results == predictions_to_coco(outputs, ids, CATEGORY_IDS)
    assert {r["category_id"] for r in results} == {7, 3}
    swapped, _ = predict_dataset(StubModel(5), stub_loader(6, size), "cpu", {1: 3, 2: 7})  # the table given is used
    assert [r["category_id"] for r in swapped] == [{7: 3, 3: 7}[r["category_id"]] for r in results]
    with pytest.raises(ValueError, match="label 2 is not in the category table"):
        predict_dataset(StubModel(5), stub_loader(6, size), "cpu", [0, 7])


def test_merge_results_keeps_each_image_once():
    part0 = ([{"image_id": 1, "score": 0.9}, {"image_id": 3, "score": 0.8}, {"image_id": 3, "score": 0.7}], [1, 3])
    part1 = ([{"image_id": 2, "score": 0.6}, {"image_id": 1, "score": 0.5}], [2, 1])  # image 1 again (padding)
    results, ids = merge_results([part0, part1])
    assert ids == [1, 3, 2] and [r["score"] for r in results] == [0.9, 0.8, 0.7, 0.6]
    assert merge_results([([], [5]), ([], [5])]) == ([], [5])  # an image without detections still counts


class ReplayModel(torch.nn.Module):
    """Answers each image (found by its size) with a fixed prediction."""

    def __init__(self, by_height):
        super().__init__()
        self.by_height = by_height

    def forward(self, images):
        return [self.by_height[image.shape[-2]] for image in images]


class GtDataset(torch.utils.data.Dataset):
    """make_gt()'s two images, told apart by their heights (the replay model's key)."""

    coco, category_ids = make_gt(), [0, 7, 3]

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.zeros(3, H + i, W), {"image_id": [10, 20][i]}


def test_engine_evaluate_maps_labels_through_the_table_it_is_given():
    preds, _ = make_predictions()
    model, dataset = ReplayModel({H: preds[0], H + 1: preds[1]}), GtDataset()
    expected = coco_evaluate(make_gt(), predictions_to_coco(preds, [10, 20], CATEGORY_IDS))
    assert engine.evaluate(model, dataset, "cpu", batch_size=1) == expected  # default: the dataset's table
    swapped = engine.evaluate(model, dataset, "cpu", batch_size=2, category_ids=[0, 3, 7])
    assert swapped["bbox"]["AP"] < expected["bbox"]["AP"]
    with pytest.raises(ValueError, match="label 2 is not in the category table"):
        engine.evaluate(model, dataset, "cpu", category_ids={1: 7})
