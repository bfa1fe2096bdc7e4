"""Data: a synthetic "shapes" instance-segmentation dataset, a Dataset for any COCO-format file, and `collate`.

Built in notebooks/00_data.ipynb.

`make_shapes` draws coloured squares, circles, triangles and stars on textured, noisy backgrounds and writes
them as PNGs plus a COCO instances JSON whose masks are run-length encoded (RLE). `CocoDataset` reads that file,
or any other COCO instances file (polygons, RLE, uncompressed RLE), into the tensors the model trains on.

Shape glossary
    N      number of instances in one image
    H, W   image height and width in pixels
    K      number of object classes (background excluded); contiguous labels are 1..K, 0 is background

Conventions
    boxes inside the package are absolute (x1, y1, x2, y2) floats; COCO stores (x, y, width, height). A mask
    pixel (row r, column c) covers [c, c + 1) x [r, r + 1), so the box of a mask is
    (min c, min r, max c + 1, max r + 1) -- the same numbers as pycocotools' `toBbox` in xywh.
"""
import contextlib
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image
from pycocotools.coco import COCO

SHAPE_CLASSES = ("square", "circle", "triangle", "star")  # COCO category ids 1..4, in this order
MIN_VISIBLE_AREA = 20  # pixels: an instance hidden by others below this visible area is not drawn at all
MIN_VISIBLE_FRACTION = 0.3  # ... nor one with less than this fraction of its own area left visible
MAX_INSTANCES = 6


# ----------------------------------------------------------------------------------------------------------------
# Shapes generator
# ----------------------------------------------------------------------------------------------------------------
def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of a shape of circumradius `radius` centred at (u, v) = (0, 0), in its own rotated frame.

    u, v: float arrays[H, W] of pixel-centre coordinates relative to the shape centre, already rotated.
    """
    if kind == "circle":
        return u * u + v * v <= radius * radius
    if kind == "square":  # the circumradius is half the diagonal
        half = radius / math.sqrt(2)
        return np.maximum(np.abs(u), np.abs(v)) <= half
    if kind == "triangle":  # equilateral: inside the three edges, each at distance radius / 2 from the centre
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            angle = math.pi / 2 + 2 * math.pi * k / 3 + math.pi / 3  # outward normal of edge k
            inside &= u * math.cos(angle) + v * math.sin(angle) <= radius / 2
        return inside
    if kind == "star":  # five points: fold the angle into one half-point and test against its edge
        inner = 0.45 * radius
        half_point = math.pi / 5
        phi = np.mod(np.arctan2(v, u), 2 * half_point)
        phi = np.where(phi > half_point, 2 * half_point - phi, phi)  # by symmetry, phi in [0, pi/5]
        rho = np.hypot(u, v)
        x, y = rho * np.cos(phi), rho * np.sin(phi)
        # edge from the outer point (radius, 0) to the inner corner (inner cos(pi/5), inner sin(pi/5))
        ex, ey = inner * math.cos(half_point) - radius, inner * math.sin(half_point)
        return ex * y - ey * (x - radius) >= 0  # on the centre's side of that edge
    raise ValueError(f"unknown shape kind {kind!r}; expected one of {SHAPE_CLASSES}")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """float32[size, size] noise in about [-1, 1] that varies smoothly over `cells` x `cells` blocks."""
    coarse = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0, cells, size, dtype=np.float32)
    i0 = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i0  # bilinear interpolation weights along each axis
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]  # (cells+1, cells+1) -> (size, cells+1)
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]  # -> (size, size)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32[size, size, 3] textured background: a base colour, smooth blotches, stripes and pixel noise."""
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    blotches = _smooth_noise(rng, size, int(rng.integers(2, 9)))[..., None] * rng.uniform(10, 45, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, period = rng.uniform(0, math.pi), rng.uniform(6, 30)
    stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    image = base + blotches + stripes[..., None] * rng.uniform(0, 15)
    return image + rng.normal(0, rng.uniform(2, 10), size=(size, size, 3)).astype(np.float32)


def _draw_image(rng: np.random.Generator, size: int):
    """One shapes image -> (uint8[size, size, 3], list of (class index, visible bool mask[size, size]))."""
    image = _background(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    shapes = []
    for _ in range(int(rng.integers(1, MAX_INSTANCES + 1))):
        kind = int(rng.integers(len(SHAPE_CLASSES)))
        radius = rng.uniform(4.0, size / 6)  # diameter from ~8 px to a third of the image
        cx, cy = rng.uniform(radius, size - radius, size=2)  # the whole shape inside the image
        angle = rng.uniform(0, 2 * math.pi)
        cos, sin = math.cos(angle), math.sin(angle)
        dx, dy = xx - cx, yy - cy
        mask = _shape_mask(SHAPE_CLASSES[kind], cos * dx + sin * dy, -sin * dx + cos * dy, radius)
        # a fill colour far enough from the background under the shape to be seen
        under = image[mask].mean(axis=0) if mask.any() else image.mean(axis=(0, 1))
        for _ in range(10):
            colour = rng.uniform(0, 255, size=3).astype(np.float32)
            if np.abs(colour - under).sum() > 150:
                break
        shading = (dx * rng.uniform(-1, 1) + dy * rng.uniform(-1, 1)) / max(radius, 1.0) * rng.uniform(0, 20)
        shapes.append((kind, mask, colour, shading))

    # occlusion: later shapes lie on top. Drop the ones left too hidden, then paint the rest;
    # removing a shape only uncovers others, so one pass is enough.
    owner = np.full((size, size), -1, dtype=np.int64)
    for j, (_, mask, _, _) in enumerate(shapes):
        owner[mask] = j
    visible = np.bincount(owner[owner >= 0], minlength=len(shapes))
    shapes = [s for j, s in enumerate(shapes)
              if visible[j] >= max(MIN_VISIBLE_AREA, MIN_VISIBLE_FRACTION * s[1].sum())]
    owner[:] = -1
    for j, (_, mask, colour, shading) in enumerate(shapes):
        owner[mask] = j
        image[mask] = colour + shading[mask][:, None]
    image += rng.normal(0, 4, size=image.shape).astype(np.float32)  # sensor noise on everything
    instances = [(kind, owner == j) for j, (kind, _, _, _) in enumerate(shapes)]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), instances


def mask_to_rle(mask: np.ndarray) -> dict:
    """bool/uint8 mask[H, W] -> COCO compressed RLE {"size": [H, W], "counts": str} (JSON-ready)."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def mask_to_xywh(mask: np.ndarray) -> list[float]:
    """Tight COCO box [x, y, width, height] of a non-empty mask[H, W] (pixel (r, c) covers [c, c+1) x [r, r+1))."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def make_shapes(out_dir, num_images: int, image_size: int = 128, seed: int = 0, progress: bool | None = None) -> Path:
    """Write a synthetic shapes dataset: out_dir/images/NNNNNN.png and out_dir/annotations.json (COCO, RLE masks).

    Each image has 1-6 shapes (SHAPE_CLASSES, COCO category ids 1..K) of random size, rotation and colour on a
    textured background. Masks are occlusion-correct (only the visible part of a shape), and a shape left with
    fewer than MIN_VISIBLE_AREA visible pixels, or less than MIN_VISIBLE_FRACTION of its area, is not drawn at
    all. The same seed gives byte-identical files.
    progress: print a line every 10 % (default: when num_images >= 500).
    Returns the path of the annotation file. Built in notebooks/00_data.ipynb.
    """
    if num_images < 1 or image_size < 32:
        raise ValueError(f"make_shapes: need num_images >= 1 and image_size >= 32, got {num_images}, {image_size}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    progress = num_images >= 500 if progress is None else progress
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(num_images):
        pixels, instances = _draw_image(rng, image_size)
        image_id, file_name = i + 1, f"{i:06d}.png"
        # compress_level=1: fast, and noisy pixels barely compress at higher levels anyway
        Image.fromarray(pixels).save(out_dir / "images" / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for kind, mask in instances:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": kind + 1,
                                "segmentation": mask_to_rle(mask), "area": float(mask.sum()),
                                "bbox": mask_to_xywh(mask), "iscrowd": 0})
        if progress and (i + 1) % max(1, num_images // 10) == 0:
            print(f"make_shapes: {i + 1}/{num_images} images", flush=True)
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(SHAPE_CLASSES)]
    dataset = {"info": {"description": f"minimaskrcnn synthetic shapes, seed {seed}", "version": "1.0"},
               "images": images, "annotations": annotations, "categories": categories}
    path = out_dir / "annotations.json"
    path.write_text(json.dumps(dataset))
    return path


# ----------------------------------------------------------------------------------------------------------------
# COCO-format dataset
# ----------------------------------------------------------------------------------------------------------------
def _load_coco_json(path: Path) -> dict:
    """Read and check a COCO instances file; every error names the file, the id and the field."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a JSON file ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'images', 'annotations' and 'categories'")
    for field in ("images", "annotations", "categories"):
        if not isinstance(data.get(field), list):
            raise ValueError(f"{path}: missing field '{field}' (a list)" if field not in data
                             else f"{path}: field '{field}' must be a list, got {type(data[field]).__name__}")
    for field, required in (("images", ("id", "file_name", "height", "width")), ("categories", ("id", "name")),
                            ("annotations", ("id", "image_id", "category_id", "segmentation"))):
        for entry in data[field]:
            missing = [k for k in required if not isinstance(entry, dict) or k not in entry]
            if missing:
                where = f"id {entry.get('id')}" if isinstance(entry, dict) and "id" in entry else f"entry {entry!r:.60}"
                raise ValueError(f"{path}: {field[:-1]} {where}: missing field '{missing[0]}'")
    images = {img["id"]: img for img in data["images"]}
    category_ids = {cat["id"] for cat in data["categories"]}
    for ann in data["annotations"]:
        if ann["image_id"] not in images:
            raise ValueError(f"{path}: annotation id {ann['id']}: field 'image_id' = {ann['image_id']!r} "
                             "is not the id of any image")
        if ann["category_id"] not in category_ids:
            raise ValueError(f"{path}: annotation id {ann['id']}: field 'category_id' = {ann['category_id']!r} "
                             "is not the id of any category")
        bbox = ann.get("bbox")
        if bbox is not None and not (isinstance(bbox, list) and len(bbox) == 4
                                     and all(isinstance(v, (int, float)) for v in bbox)):
            raise ValueError(f"{path}: annotation id {ann['id']}: field 'bbox' must be [x, y, width, height], "
                             f"got {bbox!r:.60}")
        seg = ann["segmentation"]
        if isinstance(seg, list):
            for k, poly in enumerate(seg):
                if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                    got = f"{len(poly)} coordinates" if isinstance(poly, list) else repr(poly)
                    raise ValueError(f"{path}: annotation id {ann['id']}: field 'segmentation' polygon {k} has "
                                     f"{got}; a polygon needs at least 3 (x, y) pairs")
        elif not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
            raise ValueError(f"{path}: annotation id {ann['id']}: field 'segmentation' must be a list of polygons "
                             f"or an RLE dict with 'size' and 'counts', got {seg!r:.60}")
        else:
            image = images[ann["image_id"]]
            if list(seg["size"]) != [image["height"], image["width"]]:
                raise ValueError(f"{path}: annotation id {ann['id']}: field 'segmentation' has size {seg['size']!r} "
                                 f"but image id {image['id']} is {image['height']} x {image['width']}")
    return data


def _is_degenerate(ann: dict, height: int, width: int) -> bool:
    """True for an annotation with a zero-width/height box or an empty segmentation (cheap: nothing rasterised)."""
    bbox = ann.get("bbox")
    if bbox is not None and (bbox[2] <= 0 or bbox[3] <= 0):
        return True
    seg = ann["segmentation"]
    if isinstance(seg, list):  # polygons: empty list or all of zero area (shoelace formula)
        return all(abs(np.dot(p[0::2], np.roll(p[1::2], 1)) - np.dot(p[1::2], np.roll(p[0::2], 1))) == 0
                   for p in seg)
    rle = _to_rle(seg, height, width)
    return int(mask_util.area(rle)) == 0


def _to_rle(segmentation, height: int, width: int) -> dict:
    """Any COCO segmentation (polygons, uncompressed RLE with a counts list, compressed RLE) -> compressed RLE."""
    if isinstance(segmentation, list):  # polygons: rasterise each, then merge
        return mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):  # uncompressed RLE
        return mask_util.frPyObjects(segmentation, height, width)
    rle = dict(segmentation)
    if isinstance(rle["counts"], str):
        rle["counts"] = rle["counts"].encode("ascii")
    return rle


class CocoDataset(torch.utils.data.Dataset):
    """Images and instance targets of any COCO-format instances file.

    image_dir: folder of the images (each image's `file_name` is relative to it); annotation_file: the JSON;
    transforms: optional callable (image, target) -> (image, target), e.g. transforms.Compose([...]).

    Item i -> (image Tensor[3, H, W] float in 0..1, target) with
        boxes    Tensor[N, 4] float32 (x1, y1, x2, y2) from the COCO `bbox` field
        labels   Tensor[N] int64, contiguous 1..K (`category_ids[label]` is the COCO category id)
        masks    Tensor[N, H, W] uint8 (polygons, RLE and uncompressed RLE are all decoded)
        image_id int, the COCO image id
    Crowd annotations (`iscrowd` = 1) are left out of the targets (as torchvision's detection references do);
    COCO evaluation still sees them through `.coco`. Images without instances are kept (N = 0).
    Degenerate annotations (zero-size box, empty segmentation) are skipped, with one warning giving their count;
    an annotation whose mask rasterises to nothing at this size is skipped too when the item is loaded.
    Attributes: `.coco` (pycocotools COCO), `.image_ids`, `.category_ids` (list, index = contiguous label,
    [0] = 0 for background), `.class_names` (list, [0] = "background"), `.num_skipped`.
    Built in notebooks/00_data.ipynb.
    """

    def __init__(self, image_dir, annotation_file, transforms=None):
        self.image_dir, self.annotation_file, self.transforms = Path(image_dir), Path(annotation_file), transforms
        data = _load_coco_json(self.annotation_file)
        for img in data["images"]:
            if not (self.image_dir / img["file_name"]).is_file():
                raise FileNotFoundError(f"{self.annotation_file}: image id {img['id']}: field 'file_name' = "
                                        f"{img['file_name']!r} not found in {self.image_dir}")
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
            self.coco.createIndex()
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids = [0] + [c["id"] for c in categories]
        self.class_names = ["background"] + [c["name"] for c in categories]
        self._label_of = {cat_id: label for label, cat_id in enumerate(self.category_ids) if label > 0}
        self.image_ids = sorted(self.coco.imgs)
        self._annotations = {image_id: [] for image_id in self.image_ids}
        self.num_skipped = 0
        for ann in data["annotations"]:
            if ann.get("iscrowd", 0):
                continue
            img = self.coco.imgs[ann["image_id"]]
            if _is_degenerate(ann, img["height"], img["width"]):
                self.num_skipped += 1
            else:
                self._annotations[ann["image_id"]].append(ann)
        if self.num_skipped:
            warnings.warn(f"{self.annotation_file}: skipped {self.num_skipped} degenerate annotation(s) "
                          "(zero-width/height box or empty mask)", stacklevel=2)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int):
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        pixels = np.asarray(Image.open(path).convert("RGB"))
        height, width = pixels.shape[:2]
        if (height, width) != (info["height"], info["width"]):
            raise ValueError(f"{self.annotation_file}: image id {image_id}: fields 'height', 'width' = "
                             f"{info['height']}, {info['width']} but {path} is {height} x {width}")
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255  # (H, W, 3) -> (3, H, W)
        boxes, labels, masks = [], [], []
        for ann in self._annotations[image_id]:
            mask = mask_util.decode(_to_rle(ann["segmentation"], height, width))
            if not mask.any():
                continue
            x, y, w, h = ann["bbox"] if "bbox" in ann else mask_to_xywh(mask)
            boxes.append([x, y, x + w, y + h])
            labels.append(self._label_of[ann["category_id"]])
            masks.append(mask)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, height, width), dtype=torch.uint8),
            "image_id": int(image_id),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def collate(batch):
    """[(image, target), ...] -> (list of images, list of targets): images differ in size, so no stacking."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
