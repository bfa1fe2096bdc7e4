"""Tests for minimaskrcnn.data: the shapes generator, CocoDataset on hand-written COCO files, bad input, collate."""
import json
import warnings

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from minimaskrcnn.data import MIN_VISIBLE_AREA, SHAPE_CLASSES, CocoDataset, collate, make_shapes, mask_to_xywh


@pytest.fixture(scope="module")
def shapes200(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes200")
    ann = make_shapes(out, 200, image_size=128, seed=5)
    return out, ann


def test_make_shapes_is_deterministic(tmp_path):
    a, b, c = (make_shapes(tmp_path / name, 12, image_size=64, seed=seed) for name, seed in
               (("a", 3), ("b", 3), ("c", 4)))
    assert a.read_bytes() == b.read_bytes()
    names = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())
    assert len(names) == 12
    for name in names:
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_make_shapes_prints_progress(tmp_path, capsys):
    make_shapes(tmp_path, 20, image_size=32, seed=0, progress=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10 and lines[-1] == "make_shapes: 20/20 images"


def test_make_shapes_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_images"):
        make_shapes(tmp_path, 0)


def test_pycocotools_reads_back_every_mask(shapes200):
    """pycocotools' annToMask equals the dataset's masks for every instance of a 200-image set."""
    out, ann = shapes200
    dataset = CocoDataset(out / "images", ann)
    coco = COCO(str(ann))
    assert len(dataset) == 200 and dataset.class_names == ["background", *SHAPE_CLASSES]
    assert dataset.category_ids == [0, 1, 2, 3, 4]
    checked = 0
    for i in range(len(dataset)):
        image, target = dataset[i]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=target["image_id"]))
        assert image.shape == (3, 128, 128) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        assert len(anns) == len(target["labels"])
        for j, a in enumerate(anns):
            assert np.array_equal(coco.annToMask(a), target["masks"][j].numpy())
            assert target["labels"][j] == a["category_id"]  # ids 1..4 are already contiguous
            checked += 1
    assert checked == len(coco.anns)


def test_shapes_properties(shapes200):
    """1-6 instances per image, every class, disjoint (occlusion-correct) masks, tight boxes, sizes 8 px to ~1/3."""
    out, ann = shapes200
    data = json.loads(ann.read_text())
    coco = COCO(str(ann))
    per_image = np.bincount([a["image_id"] for a in data["annotations"]], minlength=201)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 6
    assert {a["category_id"] for a in data["annotations"]} == {1, 2, 3, 4}
    sides = []
    for image_id in coco.getImgIds():
        masks = np.stack([coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id))])
        assert masks.sum(0).max() <= 1, f"image {image_id}: overlapping masks"
        for a, m in zip(coco.loadAnns(coco.getAnnIds(imgIds=image_id)), masks):
            assert a["area"] == m.sum() >= MIN_VISIBLE_AREA
            assert a["bbox"] == mask_to_xywh(m) == list(mask_util.toBbox(a["segmentation"]))
            sides.append(max(a["bbox"][2:]))
    assert min(sides) <= 10 and 35 <= max(sides) <= 128 / 3 + 2


def test_dataset_boxes_enclose_masks(shapes200):
    out, ann = shapes200
    dataset = CocoDataset(out / "images", ann)
    for i in range(0, 200, 10):
        _, target = dataset[i]
        for box, mask in zip(target["boxes"], target["masks"]):
            rows, cols = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def _write_image(folder, name, height, width):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 100, np.uint8)).save(folder / name)


def _coco_file(tmp_path, **changes):
    """A small COCO file: 2 images (the second without instances), categories 3/7/10, every segmentation kind."""
    images_dir = tmp_path / "images"
    _write_image(images_dir, "a.png", 20, 30)
    _write_image(images_dir, "b.png", 16, 16)
    square = np.zeros((20, 30), np.uint8)
    square[2:8, 4:12] = 1
    rle = mask_util.encode(np.asfortranarray(square))
    rle["counts"] = rle["counts"].decode("ascii")
    uncompressed = {"size": [20, 30], "counts": [70, 5, 15, 5, 15, 5, 485]}  # rows 10-14 of columns 3-5
    data = {
        "images": [{"id": 11, "file_name": "a.png", "height": 20, "width": 30},
                   {"id": 12, "file_name": "b.png", "height": 16, "width": 16}],
        "categories": [{"id": 10, "name": "ten"}, {"id": 3, "name": "three"}, {"id": 7, "name": "seven"}],
        "annotations": [
            {"id": 1, "image_id": 11, "category_id": 7, "segmentation": [[15, 2, 25, 2, 25, 12, 15, 12]],
             "bbox": [15, 2, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 11, "category_id": 3, "segmentation": rle, "bbox": [4, 2, 8, 6],
             "area": 48, "iscrowd": 0},
            {"id": 3, "image_id": 11, "category_id": 10, "segmentation": uncompressed, "bbox": [3, 10, 3, 5],
             "area": 15, "iscrowd": 0},
            {"id": 4, "image_id": 11, "category_id": 10, "segmentation": uncompressed, "bbox": [3, 10, 3, 5],
             "area": 15, "iscrowd": 1},
        ],
    }
    data.update(changes)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return images_dir, path, data


def test_coco_round_trip_every_segmentation_kind(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    dataset = CocoDataset(images_dir, path)
    assert dataset.category_ids == [0, 3, 7, 10]
    assert dataset.class_names == ["background", "three", "seven", "ten"]
    assert dataset.image_ids == [11, 12]
    image, target = dataset[0]
    assert image.shape == (3, 20, 30) and target["image_id"] == 11
    assert target["labels"].tolist() == [2, 1, 3]  # crowd annotation 4 left out
    assert target["boxes"].dtype == torch.float32 and target["masks"].dtype == torch.uint8
    assert target["boxes"].tolist() == [[15, 2, 25, 12], [4, 2, 12, 8], [3, 10, 6, 15]]
    coco = COCO(str(path))
    for mask, ann_id in zip(target["masks"], (1, 2, 3)):
        assert np.array_equal(mask.numpy(), coco.annToMask(coco.anns[ann_id]))
    assert target["masks"][2].sum() == 15 and target["masks"][2][10:15, 3:6].all()
    # the empty image is returned, with empty targets of the right shapes
    image, target = dataset[1]
    assert image.shape == (3, 16, 16) and target["image_id"] == 12
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["masks"].shape == (0, 16, 16)


def test_collate_keeps_lists(tmp_path):
    images_dir, path, _ = _coco_file(tmp_path)
    dataset = CocoDataset(images_dir, path)
    images, targets = collate([dataset[0], dataset[1]])
    assert [im.shape[1:] for im in images] == [(20, 30), (16, 16)]
    assert [t["image_id"] for t in targets] == [11, 12]


def test_dataset_applies_transforms(tmp_path):
    images_dir, path, _ = _coco_file(tmp_path)
    calls = []

    def spy(image, target):
        calls.append(target["image_id"])
        return image * 0, target

    image, _ = CocoDataset(images_dir, path, transforms=spy)[0]
    assert calls == [11] and image.abs().sum() == 0


def test_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json: not a JSON file"):
        CocoDataset(tmp_path, path)


@pytest.mark.parametrize("field", ["images", "annotations", "categories"])
def test_missing_top_level_field(tmp_path, field):
    _, path, data = _coco_file(tmp_path)
    del data[field]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"instances\.json: missing field '{field}'"):
        CocoDataset(tmp_path / "images", path)


def test_annotation_with_unknown_image(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    data["annotations"][1]["image_id"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances\.json: annotation id 2: field 'image_id' = 99"):
        CocoDataset(images_dir, path)


def test_annotation_with_unknown_category(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    data["annotations"][0]["category_id"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances\.json: annotation id 1: field 'category_id' = 5"):
        CocoDataset(images_dir, path)


def test_polygon_with_two_points(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    data["annotations"][0]["segmentation"] = [[1, 1, 5, 5]]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances\.json: annotation id 1: field 'segmentation' polygon 0 has "
                                         r"4 coordinates"):
        CocoDataset(images_dir, path)


def test_bbox_of_wrong_length(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    data["annotations"][1]["bbox"] = [1, 2, 3]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances\.json: annotation id 2: field 'bbox' must be"):
        CocoDataset(images_dir, path)


def test_rle_of_another_size_than_its_image(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    data["annotations"][2]["segmentation"]["size"] = [30, 20]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"annotation id 3: field 'segmentation' has size \[30, 20\] but image id 11"):
        CocoDataset(images_dir, path)


def test_missing_annotation_field(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    del data["annotations"][2]["segmentation"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances\.json: annotation id 3: missing field 'segmentation'"):
        CocoDataset(images_dir, path)


def test_missing_image_file(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    (images_dir / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"instances\.json: image id 12: field 'file_name' = 'b\.png'"):
        CocoDataset(images_dir, path)


def test_degenerate_annotations_skipped_with_one_warning(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    data["annotations"][0]["bbox"] = [15, 2, 0, 10]  # zero width
    data["annotations"][1]["segmentation"] = {"size": [20, 30], "counts": [600]}  # empty mask
    data["annotations"][2]["segmentation"] = [[1, 1, 5, 1, 9, 1]]  # a polygon of zero area
    path.write_text(json.dumps(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = CocoDataset(images_dir, path)
    assert len(caught) == 1 and "skipped 3 degenerate annotation(s)" in str(caught[0].message)
    assert dataset.num_skipped == 3
    _, target = dataset[0]
    assert len(target["labels"]) == 0 and target["masks"].shape == (0, 20, 30)


def _load_download_script():
    """data/download.py is a script, not part of the package: load it from its path."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data" / "download.py"
    spec = importlib.util.spec_from_file_location("download", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_penn_fudan_conversion_on_a_fake_folder(tmp_path):
    """Penn-Fudan's instance-id mask PNGs become a COCO file that CocoDataset and pycocotools read identically."""
    src = tmp_path / "PennFudanPed"
    (src / "PNGImages").mkdir(parents=True)
    (src / "PedMasks").mkdir()
    expected = {}
    for n in range(3):
        ids = np.zeros((24, 32), np.uint8)
        ids[2:20, 3:9] = 1
        if n > 0:
            ids[5:23, 12 + n:20 + n] = 2
        Image.fromarray(np.full((24, 32, 3), 50 * n, np.uint8)).save(src / "PNGImages" / f"FudanPed0000{n}.png")
        Image.fromarray(ids).save(src / "PedMasks" / f"FudanPed0000{n}_mask.png")
        expected[f"FudanPed0000{n}.png"] = ids
    counts = _load_download_script().convert_penn_fudan(src, tmp_path / "out", num_val=1)
    assert counts == {"train": 2, "val": 1}
    seen = set()
    for split in ("train", "val"):
        dataset = CocoDataset(tmp_path / "out" / split / "images", tmp_path / "out" / split / "annotations.json")
        assert dataset.class_names == ["background", "person"]
        for i in range(len(dataset)):
            _, target = dataset[i]
            name = dataset.coco.imgs[target["image_id"]]["file_name"]
            ids = expected[name]
            seen.add(name)
            assert len(target["masks"]) == ids.max()
            for k, mask in enumerate(target["masks"], start=1):
                assert np.array_equal(mask.numpy(), (ids == k).astype(np.uint8))
            assert target["boxes"][0].tolist() == [3, 2, 9, 20]
    assert seen == set(expected)
