"""Tests for minimaskrcnn.data: the shapes generator, CocoDataset on hand-written COCO files, bad input, collate."""
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from minimaskrcnn.data import (MAX_REPORTED_PROBLEMS, MIN_VISIBLE_AREA, SHAPE_CLASSES, CocoDataset, check_dataset,
                               collate, make_shapes, mask_to_rle, mask_to_xywh, read_image)
from minimaskrcnn.evaluation import evaluate_predictions


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
    assert set(target["masks"].unique().tolist()) == {0, 1}  # uint8 0/1, whatever the segmentation kind
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
    with pytest.raises(ValueError, match=r"instances\.json: image id 99, annotation id 2: field 'image_id' = 99 is not "
                                         r"the id of any image"):
        CocoDataset(images_dir, path)


def test_annotation_with_unknown_category(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    data["annotations"][0]["category_id"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances\.json: image id 11, annotation id 1: field 'category_id' = 5"):
        CocoDataset(images_dir, path)


def test_polygon_with_two_points(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    data["annotations"][0]["segmentation"] = [[1, 1, 5, 5]]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances\.json: image id 11, annotation id 1: field 'segmentation' "
                                         r"polygon 0 has 4 coordinates"):
        CocoDataset(images_dir, path)


def test_bbox_of_wrong_length(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    data["annotations"][1]["bbox"] = [1, 2, 3]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances\.json: image id 11, annotation id 2: field 'bbox' must be"):
        CocoDataset(images_dir, path)


def test_rle_of_another_size_than_its_image(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    data["annotations"][2]["segmentation"]["size"] = [30, 20]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"image id 11, annotation id 3: field 'segmentation' has size \[30, 20\] but "
                                         r"its image is 20 x 30"):
        CocoDataset(images_dir, path)


def test_missing_annotation_field(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    del data["annotations"][2]["category_id"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances\.json: annotation id 3: missing field 'category_id'"):
        CocoDataset(images_dir, path)


def test_missing_image_file(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    (images_dir / "b.png").unlink()
    with pytest.raises(ValueError, match=r"instances\.json: image id 12: field 'file_name' = 'b\.png' not found"):
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


# ----------------------------------------------------------------------------------------------------------------
# Images as they come
# ----------------------------------------------------------------------------------------------------------------
def _pixels(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _palette_image(index, palette, transparency=None):
    img = Image.fromarray(index, mode="P")
    img.putpalette(palette.ravel().tolist())
    if transparency is not None:
        img.info["transparency"] = transparency
    return img


def _mode_cases():
    """(name, PIL image to save, file suffix, expected float64 array (H, W, 3) in 0..1, tolerance)."""
    rgb = _pixels(6, 7)
    gray = rgb[..., 0]
    alpha = np.random.default_rng(1).integers(0, 256, size=(6, 7), dtype=np.uint8)
    alpha[0, 0] = 0  # fully transparent pixels keep their colour too
    index = (np.arange(42).reshape(6, 7) % 5).astype(np.uint8)
    palette = np.random.default_rng(2).integers(0, 256, size=(256, 3), dtype=np.uint8)
    words = np.array([[0, 1, 255, 256, 1000, 40000, 65535]] * 6, np.uint16)  # 16-bit: past 255, not clipped
    ink = np.array([[0, 255, 0, 0], [0, 0, 0, 255], [100, 50, 20, 30], [255, 255, 255, 0]], np.uint8)
    cmyk = np.broadcast_to(ink[None], (3, 4, 4)).copy()
    cmy, k = cmyk[..., :3].astype(np.float64) / 255, cmyk[..., 3:].astype(np.float64) / 255
    bits = np.random.default_rng(3).integers(0, 2, size=(6, 7)).astype(bool)
    repeat = lambda plane: np.repeat(plane[..., None], 3, axis=2)  # noqa: E731
    return [
        ("RGB", Image.fromarray(rgb), "png", rgb / 255, 0),
        ("RGBA", Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA"), "png", rgb / 255, 0),
        ("L", Image.fromarray(gray), "png", repeat(gray / 255), 0),
        ("LA", Image.fromarray(np.dstack([gray, alpha]), mode="LA"), "png", repeat(gray / 255), 0),
        ("1", Image.fromarray(bits), "png", repeat(bits.astype(np.float64)), 0),
        ("P", _palette_image(index, palette), "png", palette[index] / 255, 0),
        ("P+transparency", _palette_image(index, palette, bytes([0, 128, 255, 7])), "png", palette[index] / 255, 0),
        ("P+one transparent colour", _palette_image(index, palette, 2), "png", palette[index] / 255, 0),
        ("CMYK", Image.fromarray(cmyk, mode="CMYK"), "tif", (1 - cmy) * (1 - k), 1 / 255),
        ("I;16", Image.fromarray(words), "png", repeat(words / 65535), 1e-6),
        ("I", Image.fromarray(words.astype(np.int32)), "tif", repeat(words / 65535), 1e-6),
    ]


@pytest.mark.parametrize("case", _mode_cases(), ids=lambda case: case[0])
def test_read_image_converts_every_mode(tmp_path, case):
    name, img, suffix, expected, tolerance = case
    path = tmp_path / f"image.{suffix}"
    img.save(path)
    mode = Image.open(path).mode
    assert mode.split(";")[0] == name.split("+")[0].split(";")[0], f"the file was saved as {mode}, not {name}"
    image = read_image(path)
    assert image.dtype == torch.float32 and image.shape == (3, *expected.shape[:2])
    assert np.abs(image.permute(1, 2, 0).double().numpy() - expected).max() <= tolerance + 1e-7


def test_read_image_refuses_pixels_without_a_known_scale(tmp_path):
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "int32.tif")
    Image.fromarray(np.array([[0.0, 0.5]], np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"int32\.tif: cannot read the image .*0 to 70000"):
        read_image(tmp_path / "int32.tif")
    with pytest.raises(ValueError, match=r"float\.tif: cannot read the image .*floating-point"):
        read_image(tmp_path / "float.tif")


# how a camera stores the displayed picture D for each EXIF orientation (numpy only: independent of PIL's table)
STORED_FOR_ORIENTATION = {
    2: lambda d: d[:, ::-1], 3: lambda d: d[::-1, ::-1], 4: lambda d: d[::-1],
    5: lambda d: d.transpose(1, 0, 2), 6: lambda d: np.rot90(d, 1), 7: lambda d: d[::-1, ::-1].transpose(1, 0, 2),
    8: lambda d: np.rot90(d, -1),
}


def _exif_dataset(tmp_path, orientation, suffix="png", json_size=None):
    """A 12 x 20 displayed image with a bright box (rows 2-5, columns 3-10) annotated on the displayed pixels."""
    displayed = _pixels(12, 20) // 2
    displayed[2:6, 3:11] = 250
    stored = np.ascontiguousarray(STORED_FOR_ORIENTATION[orientation](displayed))
    exif = Image.Exif()
    exif[0x0112] = orientation
    (tmp_path / "images").mkdir()
    Image.fromarray(stored).save(tmp_path / "images" / f"photo.{suffix}", exif=exif)
    height, width = json_size or (12, 20)
    data = {"images": [{"id": 1, "file_name": f"photo.{suffix}", "height": height, "width": width}],
            "categories": [{"id": 1, "name": "box"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                             "segmentation": [[3, 2, 11, 2, 11, 6, 3, 6]]}]}
    (tmp_path / "instances.json").write_text(json.dumps(data))
    return tmp_path / "images", tmp_path / "instances.json", displayed


@pytest.mark.parametrize("orientation", sorted(STORED_FOR_ORIENTATION))
def test_exif_orientation_applied_to_pixels_and_masks(tmp_path, orientation):
    images_dir, path, displayed = _exif_dataset(tmp_path, orientation)
    dataset = CocoDataset(images_dir, path, check=True)
    image, target = dataset[0]
    assert torch.equal(image, torch.from_numpy(displayed).permute(2, 0, 1).float() / 255)
    bright = torch.from_numpy((displayed == 250).all(axis=2).astype(np.uint8))
    assert torch.equal(target["masks"][0], bright)  # the mask lies on the bright box of what a viewer shows
    assert target["boxes"].tolist() == [[3, 2, 11, 6]]


def test_exif_orientation_of_a_jpeg_photo(tmp_path):
    images_dir, path, displayed = _exif_dataset(tmp_path, 6, suffix="jpg")
    image, target = CocoDataset(images_dir, path)[0]
    assert image.shape == (3, 12, 20)
    bright = target["masks"][0].bool()
    assert image[:, bright].mean() > 0.9 and image[:, ~bright].mean() < 0.6  # JPEG is lossy: the box stays bright


def test_size_of_the_stored_not_displayed_image_is_explained(tmp_path):
    images_dir, path, _ = _exif_dataset(tmp_path, 6, json_size=(20, 12))  # the JSON has the un-rotated size
    with pytest.raises(ValueError, match=r"image id 1: fields 'height', 'width' = 20, 12 but .*photo\.png is 12 x 20 "
                                         r"as displayed \(EXIF orientation 6 applied; the file stores 20 x 12"):
        CocoDataset(images_dir, path, check=True)


def test_truncated_image_found_by_check_and_named_when_loaded(tmp_path):
    images_dir, path, _ = _coco_file(tmp_path)
    whole = (images_dir / "b.png").read_bytes()
    (images_dir / "b.png").write_bytes(whole[: len(whole) // 2])
    dataset = CocoDataset(images_dir, path)  # cheap: nothing decoded, so nothing found yet
    dataset[0]
    expected = r"instances\.json: image id 12: field 'file_name' = 'b\.png': .*b\.png: cannot read the image"
    with pytest.raises(ValueError, match=expected):
        dataset[1]
    with pytest.raises(ValueError, match="1 problem.*\n.*" + expected):
        CocoDataset(images_dir, path, check=True)
    (problem,) = check_dataset(images_dir, path)
    assert "image id 12" in problem and "truncated" in problem


def test_not_an_image_at_all(tmp_path):
    images_dir, path, _ = _coco_file(tmp_path)
    (images_dir / "a.png").write_text("not a picture")
    (problem,) = check_dataset(images_dir, path)
    assert re.search(r"image id 11: field 'file_name' = 'a\.png': .*a\.png: cannot read the image "
                     r"\(UnidentifiedImageError", problem)


# ----------------------------------------------------------------------------------------------------------------
# COCO files as exported
# ----------------------------------------------------------------------------------------------------------------
def test_check_reports_every_problem_at_once(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    _write_image(images_dir, "c.png", 10, 10)
    data["images"] += [{"id": "img_003", "file_name": "c.png", "height": 10, "width": 10},
                       {"id": 14, "file_name": "../escape.png", "height": 10, "width": 10},
                       {"id": 15, "file_name": "c.png", "height": 0, "width": 10},
                       {"id": 16, "file_name": "c.png", "height": 10, "width": 11}]  # wrong size: seen by decoding
    data["annotations"][0]["bbox"] = [15, 2, -10, 10]
    data["annotations"][1]["segmentation"] = [[1, 1, float("nan"), 5, 9, 9]]
    data["annotations"][2]["area"] = float("inf")
    data["categories"][2]["id"] = "7"
    path.write_text(json.dumps(data))
    problems = check_dataset(images_dir, path)
    expected = [
        r"image id 'img_003': field 'id' must be an integer",
        r"image id 14: field 'file_name' = '\.\./escape\.png' leads outside the image folder",
        r"image id 15: field 'height' = 0 must be a positive integer",
        r"category id '7': field 'id' must be an integer",
        r"image id 11, annotation id 1: field 'category_id' = 7 is not the id of any category",  # it is now "7"
        r"image id 11, annotation id 1: field 'bbox' = \[15, 2, -10, 10\] has a negative width or height",
        r"image id 11, annotation id 2: field 'segmentation' polygon 0 holds a value that is not a finite number",
        r"image id 11, annotation id 3: field 'area' = inf must be a finite number >= 0",
        r"image id 16: fields 'height', 'width' = 10, 11 but .*c\.png is 10 x 10 as displayed",
    ]
    assert len(problems) == len(expected)
    for line, pattern in zip(problems, expected):
        assert re.search(r"instances\.json: " + pattern, line), (pattern, line)
    with pytest.raises(ValueError) as caught:
        CocoDataset(images_dir, path, check=True)
    assert str(caught.value).splitlines() == [f"{path}: {len(expected)} problem(s) in this dataset:",
                                              *(f"  {line}" for line in problems)]
    with pytest.raises(ValueError) as caught:  # without check: the same, less what only decoding finds
        CocoDataset(images_dir, path)
    assert str(caught.value).splitlines()[1:] == [f"  {line}" for line in problems[:-1]]


def test_many_problems_are_capped_in_the_error(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    extra = MAX_REPORTED_PROBLEMS + 5
    data["annotations"] += [{"id": 100 + i, "image_id": 11, "category_id": 3, "segmentation": [[1, 1, 5, 1, 5, 5]],
                             "bbox": [1, 1, 4, float("nan")]} for i in range(extra)]
    path.write_text(json.dumps(data))
    assert len(check_dataset(images_dir, path)) == extra
    with pytest.raises(ValueError) as caught:
        CocoDataset(images_dir, path)
    lines = str(caught.value).splitlines()
    assert lines[0].endswith(f"{extra} problem(s) in this dataset:") and len(lines) == MAX_REPORTED_PROBLEMS + 2
    assert lines[-1] == "  ... and 5 more (minimaskrcnn.data.check_dataset or `python -m minimaskrcnn check-data` " \
                        "lists them all)"


def test_check_dataset_on_a_clean_dataset_and_a_missing_file(tmp_path, capsys):
    images_dir, path, _ = _coco_file(tmp_path)
    assert check_dataset(images_dir, path, progress=True) == []
    assert capsys.readouterr().out.splitlines() == ["check_dataset: 1/2 images", "check_dataset: 2/2 images"]
    assert check_dataset(images_dir, tmp_path / "nope.json") == [f"{tmp_path / 'nope.json'}: annotation file not found"]


@pytest.mark.parametrize("field", ["images", "annotations", "categories"])
def test_duplicate_ids_refused(tmp_path, field):
    images_dir, path, data = _coco_file(tmp_path)
    data[field].append(dict(data[field][0]))
    path.write_text(json.dumps(data))
    kind = {"images": "image", "annotations": "annotation", "categories": "category"}[field]
    first_id = data[field][0]["id"]
    with pytest.raises(ValueError, match=rf"instances\.json: {kind} id {first_id}: 2 entries share this id"):
        CocoDataset(images_dir, path)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["images"][0].update(file_name=str(Path("/etc/passwd"))), r"image id 11: field 'file_name' = "
                                                                             r"'/etc/passwd' leads outside"),
    (lambda d: d["images"][0].update(width=0), r"image id 11: field 'width' = 0 must be a positive integer"),
    (lambda d: d["images"][0].update(height=20.0), r"image id 11: field 'height' = 20\.0 must be a positive integer"),
    (lambda d: d["annotations"][0].update(bbox=[15, 2, 10, float("inf")]), r"annotation id 1: field 'bbox' = "
                                                                            r"\[15, 2, 10, inf\] is not finite"),
    (lambda d: d["annotations"][0].update(bbox=[31, 2, 10, 10]), r"annotation id 1: field 'bbox' = \[31, 2, 10, 10\] "
                                                                  r"lies entirely outside its 20 x 30 image"),
    (lambda d: d["annotations"][0].update(bbox=[-12, 2, 10, 10]), r"annotation id 1: field 'bbox' = "
                                                                   r"\[-12, 2, 10, 10\] lies entirely outside"),
    (lambda d: d["annotations"][0].update(category_id=7.5), r"annotation id 1: field 'category_id' = 7\.5 is not "
                                                             r"the id of any category"),
    (lambda d: d["annotations"][0].update(iscrowd=2), r"annotation id 1: field 'iscrowd' = 2 must be 0 or 1"),
    (lambda d: d["annotations"][0].update(id="a1"), r"annotation id 'a1': field 'id' must be an integer"),
    (lambda d: d["annotations"][2]["segmentation"].update(counts=[70, 5, 15]),
     r"annotation id 3: field 'segmentation' counts add up to 90 pixels but its image has 20 x 30"),
    (lambda d: d["annotations"][1]["segmentation"].update(counts="has spaces"),
     r"annotation id 2: field 'segmentation' counts must be a list of run lengths or a compressed RLE string"),
])
def test_coco_as_exported_refused(tmp_path, change, message):
    images_dir, path, data = _coco_file(tmp_path)
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances\.json: (image id 11, )?" + message):
        CocoDataset(images_dir, path)


def test_string_image_ids_refused_with_the_fix(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    data["images"][0]["id"] = "img_001"
    for ann in data["annotations"]:
        ann["image_id"] = "img_001"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as caught:
        CocoDataset(images_dir, path)
    lines = str(caught.value).splitlines()
    assert len(lines) == 2  # said once, for the image, not again for each of its annotations
    assert lines[1].endswith("image id 'img_001': field 'id' must be an integer (pycocotools matches results to "
                             "images by integer id): renumber the images and the annotations' 'image_id'")


def test_box_only_export_refused_saying_how_many_and_which(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    data["annotations"][0]["segmentation"] = []
    del data["annotations"][2]["segmentation"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances\.json: 2 annotation\(s\) have no mask \(field 'segmentation' "
                                         r"missing or \[\]\): annotation ids 1 \(image 11\), 3 \(image 11\)\. "
                                         r"A box-only export\? Mask R-CNN learns from instance masks"):
        CocoDataset(images_dir, path)


def test_missing_bbox_area_iscrowd_derived_and_seen_by_coco_evaluation(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    for ann in data["annotations"]:
        del ann["bbox"], ann["area"]
        if ann["id"] != 4:
            del ann["iscrowd"]
    path.write_text(json.dumps(data))
    dataset = CocoDataset(images_dir, path)
    coco = COCO(str(_coco_file(tmp_path / "complete")[1]))  # the same file with every field written out
    for ann in dataset.coco.dataset["annotations"]:
        expected = coco.anns[ann["id"]]
        assert ann["iscrowd"] == expected["iscrowd"] and ann["area"] == expected["area"]
        assert ann["bbox"] == expected["bbox"]
    assert dataset.coco.anns[1]["area"] == 100  # the indexed annotations are the same dicts
    _, target = dataset[0]
    assert target["boxes"].tolist() == [[15, 2, 25, 12], [4, 2, 12, 8], [3, 10, 6, 15]]
    perfect = {"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(3),
               "masks": target["masks"][:, None].float()}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
             "masks": torch.zeros(0, 1, 16, 16)}
    metrics = evaluate_predictions(dataset, [perfect, empty], [11, 12])  # KeyError 'area' if it were missing
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["segm"]["AP"] == pytest.approx(1.0)


def test_zero_area_derived_and_two_categories_with_one_name_refused(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    data["annotations"][0]["area"] = 0  # what some exporters write: COCO evaluation would call a 100-px object small
    path.write_text(json.dumps(data))
    assert CocoDataset(images_dir, path).coco.anns[1]["area"] == 100
    data["categories"].append({"id": 99, "name": data["categories"][0]["name"]})
    path.write_text(json.dumps(data))
    name = data["categories"][0]["name"]
    with pytest.raises(ValueError, match=f"instances\\.json: category name '{name}': 2 categories share this name"):
        CocoDataset(images_dir, path)


def test_boxes_past_the_image_clipped_with_a_warning(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    data["annotations"][0]["bbox"] = [15, -3, 20, 15]  # past the top and the right of the 20 x 30 image
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=r"clipped 1 box\(es\) that extend past their image"):
        dataset = CocoDataset(images_dir, path)
    assert dataset.coco.anns[1]["bbox"] == [15, 0, 15, 12]
    assert dataset[0][1]["boxes"][0].tolist() == [15, 0, 30, 12]


def _truncated_rle(tmp_path):
    images_dir, path, data = _coco_file(tmp_path)
    data["annotations"][1]["segmentation"]["counts"] = data["annotations"][1]["segmentation"]["counts"][:-2]
    path.write_text(json.dumps(data))
    return images_dir, path


def test_corrupt_compressed_rle_refused_instead_of_a_garbage_mask(tmp_path):
    """pycocotools decodes runs that do not cover the image into uninitialised memory (values up to 255)."""
    images_dir, path = _truncated_rle(tmp_path)
    expected = (r"instances\.json: image id 11, annotation id 2: field 'segmentation' compressed RLE has runs adding "
                r"up to \d+ pixels, not the 20 x 30 of its image")
    (problem,) = check_dataset(images_dir, path)
    assert re.search(expected, problem)
    with pytest.raises(ValueError, match=expected):
        CocoDataset(images_dir, path)[0]


def test_rle_string_runs_match_pycocotools(tmp_path):
    from minimaskrcnn.data import _rle_string_runs

    rng = np.random.default_rng(0)
    for shape in ((1, 1), (7, 5), (40, 33)):
        mask = rng.random(shape) < 0.3
        runs = _rle_string_runs(mask_to_rle(mask)["counts"])
        values = np.repeat(np.arange(len(runs)) % 2, runs)  # runs alternate 0, 1, 0, ... in column-major order
        assert np.array_equal(values.reshape(shape[::-1]).T, mask)
    assert _rle_string_runs("0P") is None  # a value whose "more follows" bit is set at the end of the string


def test_transforms_must_keep_masks_uint8_0_1(tmp_path):
    images_dir, path, _ = _coco_file(tmp_path)

    def to_255(image, target):
        return image, {**target, "masks": target["masks"] * 255}

    with pytest.raises(ValueError, match=r"image id 11: the transforms returned masks of dtype torch\.uint8 with "
                                         r"values up to 255"):
        CocoDataset(images_dir, path, transforms=to_255)[0]

    def to_bool(image, target):
        return image, {**target, "masks": target["masks"].bool()}

    with pytest.raises(ValueError, match=r"image id 12: the transforms returned masks of dtype torch\.bool"):
        CocoDataset(images_dir, path, transforms=to_bool)[1]  # no instances: still the wrong type


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
