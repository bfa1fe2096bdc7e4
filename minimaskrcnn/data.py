"""Data: a synthetic "shapes" instance-segmentation dataset, a Dataset for any COCO-format file, and `collate`.

Built in notebooks/00_data.ipynb.

`make_shapes` draws coloured squares, circles, triangles and stars on textured, noisy backgrounds and writes
them as PNGs plus a COCO instances JSON whose masks are run-length encoded (RLE). `CocoDataset` reads that file,
or any other COCO instances file (polygons, RLE, uncompressed RLE), into the tensors the model trains on;
`read_image` reads a photo as a viewer shows it; `check_dataset` lists every problem of a dataset before training.

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
import re
import warnings
from collections import Counter, defaultdict
from pathlib import Path, PurePath

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image, ImageOps
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
# Images as they come
# ----------------------------------------------------------------------------------------------------------------
EXIF_ORIENTATION = 0x0112  # the EXIF tag a camera writes instead of rotating the pixels
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I": how PIL may open a 16-bit file (32-bit ints)


def _read_image(path: Path) -> tuple[torch.Tensor, int, tuple[int, int]]:
    """read_image, plus the file's EXIF orientation and its stored (height, width) before the orientation."""
    try:
        with Image.open(path) as img:
            img.load()  # decode everything now: a truncated file fails here
            orientation, stored = img.getexif().get(EXIF_ORIENTATION, 1), (img.height, img.width)
            shown = ImageOps.exif_transpose(img)
            if shown.mode in SIXTEEN_BIT_MODES:
                gray = np.asarray(shown).astype(np.float32)
                if gray.size and (gray.min() < 0 or gray.max() > 65535):
                    raise ValueError(f"32-bit integer pixels from {gray.min():.0f} to {gray.max():.0f} fit no known "
                                     "scale (16-bit 0..65535 is read); convert the file to 8 or 16 bits")
                image = torch.from_numpy(gray / 65535).expand(3, -1, -1).contiguous()  # (H, W) -> (3, H, W)
            elif shown.mode == "F":
                raise ValueError("floating-point pixels have no known scale; convert the file to 8 or 16 bits")
            else:
                if shown.mode in ("P", "PA"):  # palette transparency becomes alpha first (dropped below, no warning)
                    shown = shown.convert("RGBA")
                pixels = np.array(shown.convert("RGB"))  # uint8 (H, W, 3); alpha dropped, CMYK -> RGB
                image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255  # (H, W, 3) -> (3, H, W)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: cannot read the image ({type(err).__name__}: {err})") from None
    return image, orientation, stored


def read_image(path) -> torch.Tensor:
    """An image file as a viewer shows it -> Tensor[3, H, W] float32 in 0..1.

    - The EXIF orientation is applied (PIL.ImageOps.exif_transpose), so H, W are the displayed size -- the image
      that annotation tools show and annotate.
    - 16-bit grayscale ("I;16", and "I" as PIL opens some 16-bit files) is divided by 65535, not clipped at 255;
      "I" pixels outside 0..65535 and float ("F") files are refused: there is no known scale for them.
    - Every other mode goes through PIL's conversion to RGB and is divided by 255: grayscale "L" and "1" are
      repeated over the three channels, palette "P" looks its colours up, CMYK is R = 255 (1 - C)(1 - K) ... (no
      ICC profile). Alpha (RGBA, LA, PA, a palette's transparency) is dropped: each pixel keeps its stored
      colour, not blended over any background (as PIL's convert("RGB") and torchvision's decoders do).
    Raises ValueError naming the file when it is not an image, is truncated or corrupt.
    CocoDataset (notebooks/00_data.ipynb) reads its images with it; no notebook shows it on its own.
    """
    return _read_image(Path(path))[0]


# ----------------------------------------------------------------------------------------------------------------
# COCO files as exported: every problem found before training
# ----------------------------------------------------------------------------------------------------------------
MAX_REPORTED_PROBLEMS = 20  # an error lists this many problems; check_dataset returns them all


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_key(value) -> bool:
    """Can `value` be looked up among ids (hashable JSON scalars)?"""
    return isinstance(value, (int, float, str))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a JSON file ({err})") from None


def _where(kind: str, entry: dict) -> str:
    """Who a problem is about: 'image id 3', 'image id 3, annotation id 7', 'category id 2'."""
    where = f"{kind} id {entry['id']!r}"
    return f"image id {entry['image_id']!r}, {where}" if kind == "annotation" and "image_id" in entry else where


def _checked_entries(entries: list, kind: str, required: tuple, path: Path, problems: list, check) -> dict:
    """Check each entry of one top-level list; append its problems; return {id: entry} of the usable entries.

    check(entry) -> problems of one entry that has the required fields, each "field ...: why" (file and id are
    added here). An entry is usable when it has no problem and no other entry shares its id.
    """
    usable, count = {}, Counter()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(f"{path}: {kind} entry {index}: expected a JSON object, got {entry!r:.60}")
            continue
        missing = ", ".join(repr(field) for field in required if field not in entry)
        if missing:
            where = f"{kind} id {entry['id']!r}" if "id" in entry else f"{kind} entry {index}"
            problems.append(f"{path}: {where}: missing field {missing}")
            continue
        found = check(entry)
        problems += [f"{path}: {_where(kind, entry)}: {problem}" for problem in found]
        if _is_key(entry["id"]):
            count[entry["id"]] += 1
            if not found:
                usable[entry["id"]] = entry
    for entry_id, n in count.items():
        if n > 1:
            problems.append(f"{path}: {kind} id {entry_id!r}: {n} entries share this id (ids must be unique)")
            usable.pop(entry_id, None)
    return usable


def _image_problems(img: dict, image_dir: Path) -> list[str]:
    found = [] if _is_int(img["id"]) else [
        "field 'id' must be an integer (pycocotools matches results to images by integer id): renumber the "
        "images and the annotations' 'image_id'"]
    found += [f"field '{field}' = {img[field]!r:.60} must be a positive integer" for field in ("height", "width")
              if not _is_int(img[field]) or img[field] <= 0]
    name = img["file_name"]
    if not isinstance(name, str) or not name:
        found.append(f"field 'file_name' = {name!r:.60} must be a file name")
    elif PurePath(name).is_absolute() or ".." in PurePath(name).parts:
        found.append(f"field 'file_name' = {name!r:.80} leads outside the image folder (absolute or '..')")
    elif not (image_dir / name).is_file():
        found.append(f"field 'file_name' = {name!r} not found in {image_dir}")
    return found


def _bbox_problems(bbox, size) -> list[str]:
    """Problems of a COCO box [x, y, width, height] on an image of size (H, W) (None: unknown)."""
    shape_error = [f"field 'bbox' must be [x, y, width, height], got {bbox!r:.60}"]
    if not (isinstance(bbox, list) and len(bbox) == 4):
        return shape_error
    try:
        finite = math.isfinite(sum(bbox))  # NaN and inf survive the sum, text raises
    except TypeError:
        return shape_error
    if not finite:
        return [f"field 'bbox' = {bbox!r} is not finite"]
    x, y, w, h = bbox
    if w < 0 or h < 0:
        return [f"field 'bbox' = {bbox!r} has a negative width or height"]
    if size and w > 0 and h > 0 and (x >= size[1] or y >= size[0] or x + w <= 0 or y + h <= 0):
        return [f"field 'bbox' = {bbox!r} lies entirely outside its {size[0]} x {size[1]} image"]
    return []


def _segmentation_problems(seg, size) -> list[str]:
    """Problems of a non-empty COCO segmentation on an image of size (H, W) (None: unknown); nothing decoded."""
    if isinstance(seg, list):
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                got = f"{len(poly)} coordinates" if isinstance(poly, list) else repr(poly)
                return [f"field 'segmentation' polygon {k} has {got}; a polygon needs at least 3 (x, y) pairs"]
            try:  # one sum in C instead of a test per coordinate: NaN and inf survive it, text raises
                finite = math.isfinite(sum(poly))
            except TypeError:
                finite = False
            if not finite:
                return [f"field 'segmentation' polygon {k} holds a value that is not a finite number: {poly!r:.80}"]
        return []
    if not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
        return ["field 'segmentation' must be a list of polygons or an RLE dict with 'size' and 'counts', "
                f"got {seg!r:.60}"]
    counts = seg["counts"]
    if size and seg["size"] != list(size):
        return [f"field 'segmentation' has size {seg['size']!r:.30} but its image is {size[0]} x {size[1]}"]
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts):
            return [f"field 'segmentation' counts must be run lengths (integers >= 0), got {counts!r:.60}"]
        if size and sum(counts) != size[0] * size[1]:
            return [f"field 'segmentation' counts add up to {sum(counts)} pixels but its image has "
                    f"{size[0]} x {size[1]}"]
    elif not (isinstance(counts, str) and re.fullmatch(r"[0-o]+", counts)):  # compressed RLE: characters '0'..'o'
        return [f"field 'segmentation' counts must be a list of run lengths or a compressed RLE string, "
                f"got {counts!r:.60}"]
    return []


def _annotation_problems(ann: dict, images: dict, image_ids: set, category_ids: set) -> list[str]:
    found = [] if _is_int(ann["id"]) else ["field 'id' must be an integer"]
    image_id, category_id = ann["image_id"], ann["category_id"]
    if not (_is_key(image_id) and image_id in image_ids):
        found.append(f"field 'image_id' = {image_id!r:.60} is not the id of any image")
    if not (_is_key(category_id) and category_id in category_ids):
        found.append(f"field 'category_id' = {category_id!r:.60} is not the id of any category")
    area = ann.get("area")
    if area is not None and not (_is_number(area) and math.isfinite(area) and area >= 0):
        found.append(f"field 'area' = {area!r:.60} must be a finite number >= 0")
    if ann.get("iscrowd", 0) not in (0, 1):
        found.append(f"field 'iscrowd' = {ann['iscrowd']!r:.60} must be 0 or 1")
    image = images.get(image_id) if _is_key(image_id) else None
    size = (image["height"], image["width"]) if image else None
    if ann.get("bbox") is not None:
        found += _bbox_problems(ann["bbox"], size)
    if ann.get("segmentation") not in (None, []):
        found += _segmentation_problems(ann["segmentation"], size)
    return found


def _json_problems(data, path: Path, image_dir: Path) -> tuple[list[str], dict, list]:
    """Everything wrong with a parsed COCO instances file that shows without decoding any image (cheap).

    Returns (problems, {image id: entry} of the usable images, the usable annotations of those images). Each
    problem names the file, the image and/or annotation id, the field and its value.
    """
    if not isinstance(data, dict):
        return [f"{path}: expected a JSON object with 'images', 'annotations' and 'categories'"], {}, []
    problems = [f"{path}: missing field '{field}' (a list)" if field not in data
                else f"{path}: field '{field}' must be a list, got {type(data[field]).__name__}"
                for field in ("images", "annotations", "categories") if not isinstance(data.get(field), list)]
    if problems:
        return problems, {}, []
    images = _checked_entries(data["images"], "image", ("id", "file_name", "height", "width"), path, problems,
                              lambda img: _image_problems(img, image_dir))
    _checked_entries(data["categories"], "category", ("id", "name"), path, problems,
                     lambda cat: [] if _is_int(cat["id"]) else ["field 'id' must be an integer"])
    names = Counter(c["name"] for c in data["categories"] if isinstance(c, dict) and isinstance(c.get("name"), str))
    problems += [f"{path}: category name {name!r}: {n} categories share this name (class names label the "
                 "predictions and key the per-class results): rename or merge them"
                 for name, n in names.items() if n > 1]
    image_ids, category_ids = ({e["id"] for e in data[field] if isinstance(e, dict) and _is_key(e.get("id"))}
                               for field in ("images", "categories"))
    annotations = _checked_entries(data["annotations"], "annotation", ("id", "image_id", "category_id"), path,
                                   problems, lambda ann: _annotation_problems(ann, images, image_ids, category_ids))
    no_mask = [a for a in data["annotations"] if isinstance(a, dict) and a.get("segmentation") in (None, [])]
    if no_mask:
        listed = ", ".join(f"{a.get('id')!r} (image {a.get('image_id')!r})" for a in no_mask[:10])
        problems.insert(0, f"{path}: {len(no_mask)} annotation(s) have no mask (field 'segmentation' missing or "
                           f"[]): annotation ids {listed}{', ...' if len(no_mask) > 10 else ''}. A box-only "
                           "export? Mask R-CNN learns from instance masks: export polygons or RLE masks for them")
    usable = [a for a in annotations.values() if a["image_id"] in images and a.get("segmentation") not in (None, [])]
    return problems, images, usable


def _rle_string_runs(counts: str) -> list[int] | None:
    """Run lengths of a compressed RLE string (pycocotools' rleFrString in Python), or None when it is cut short."""
    runs, p = [], 0
    while p < len(counts):
        value, k, more = 0, 0, True
        while more:
            if p == len(counts):
                return None
            c = ord(counts[p]) - 48  # 6 bits a character: 5 of value, 1 "more follows"
            value |= (c & 0x1F) << 5 * k
            more = c & 0x20
            p, k = p + 1, k + 1
            if not more and c & 0x10:  # sign bit of the last group
                value |= -1 << 5 * k
        runs.append(value + runs[-2] if len(runs) > 2 else value)  # runs after the second are stored as differences
    return runs


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


def _annotation_mask(path: Path, ann: dict, height: int, width: int) -> np.ndarray:
    """uint8 0/1 mask[H, W] of one checked annotation.

    pycocotools decodes a compressed RLE whose runs do not cover the image into uninitialised memory (values up to
    255, different each run), so those runs are checked first: ValueError naming the file, ids and field.
    """
    counts = ann["segmentation"]["counts"] if isinstance(ann["segmentation"], dict) else None
    if isinstance(counts, str):
        runs = _rle_string_runs(counts)
        if runs is None or min(runs, default=0) < 0 or sum(runs) != height * width:
            covered = "is cut short" if runs is None else f"has runs adding up to {sum(runs)} pixels"
            raise ValueError(f"{path}: {_where('annotation', ann)}: field 'segmentation' compressed RLE {covered}, "
                             f"not the {height} x {width} of its image (a corrupt or truncated 'counts' string)")
    return mask_util.decode(_to_rle(ann["segmentation"], height, width))


def _dataset_image(path: Path, image_dir: Path, info: dict) -> torch.Tensor:
    """The decoded image of one checked COCO image entry; ValueError when it cannot be read or has another size."""
    file = image_dir / info["file_name"]
    where = f"{path}: image id {info['id']!r}"
    try:
        image, orientation, stored = _read_image(file)
    except ValueError as err:
        raise ValueError(f"{where}: field 'file_name' = {info['file_name']!r}: {err}") from None
    if image.shape[1:] != (info["height"], info["width"]):
        exif = (f" (EXIF orientation {orientation} applied; the file stores {stored[0]} x {stored[1]}, and "
                "annotation tools show and annotate the rotated image)" if orientation != 1 else "")
        raise ValueError(f"{where}: fields 'height', 'width' = {info['height']}, {info['width']} but {file} is "
                         f"{image.shape[1]} x {image.shape[2]} as displayed{exif}")
    return image


def _decode_problems(path: Path, image_dir: Path, images: dict, annotations: list, progress: bool) -> list[str]:
    """Problems that show only when every image is decoded and every mask rasterised."""
    by_image = defaultdict(list)
    for ann in annotations:
        by_image[ann["image_id"]].append(ann)
    problems = []
    for n, info in enumerate(images.values(), start=1):
        try:
            _dataset_image(path, image_dir, info)
        except ValueError as err:
            problems.append(str(err))
        for ann in by_image[info["id"]]:
            try:
                _annotation_mask(path, ann, info["height"], info["width"])
            except ValueError as err:
                problems.append(str(err))
        if progress and n % max(1, len(images) // 10) == 0:
            print(f"check_dataset: {n}/{len(images)} images", flush=True)
    return problems


def _problem_report(path: Path, problems: list[str]) -> str:
    """One error message for many problems: a count, then the first MAX_REPORTED_PROBLEMS, one a line."""
    lines = [f"{path}: {len(problems)} problem(s) in this dataset:"]
    lines += [f"  {problem}" for problem in problems[:MAX_REPORTED_PROBLEMS]]
    if len(problems) > MAX_REPORTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_REPORTED_PROBLEMS} more "
                     "(minimaskrcnn.data.check_dataset or `python -m minimaskrcnn check-data` lists them all)")
    return "\n".join(lines)


def check_dataset(image_dir, annotation_file, progress: bool = False) -> list[str]:
    """Every problem of a COCO-format dataset, found before training: a list of lines, [] when there is none.

    Checks the JSON (what CocoDataset always checks, see its docstring), then opens and fully decodes every image
    (EXIF orientation applied) and compares its displayed size with the JSON's 'height' and 'width', and decodes
    every annotation's mask. Each line names the file, the image id and/or annotation id, the field and its value.
    Nothing is raised for bad data. progress: print a line every 10 % of the images.
    `CocoDataset(..., check=True)` (notebooks/00_data.ipynb) raises with these; no notebook shows it on its own.
    """
    image_dir, path = Path(image_dir), Path(annotation_file)
    try:
        data = _read_json(path)
    except (FileNotFoundError, ValueError) as err:
        return [str(err)]
    problems, images, annotations = _json_problems(data, path, image_dir)
    return problems + _decode_problems(path, image_dir, images, annotations, progress)


def _complete_annotations(data: dict, images: dict) -> int:
    """Fill in, in place, what exporters leave out: 'iscrowd' 0, 'bbox' and 'area' from the mask (an 'area' of 0
    too: COCO evaluation sorts objects into small / medium / large by it); clip each box to its image. Returns the
    number of boxes clipped."""
    clipped = 0
    for ann in data["annotations"]:
        height, width = images[ann["image_id"]]["height"], images[ann["image_id"]]["width"]
        ann.setdefault("iscrowd", 0)
        if ann.get("bbox") is None or not ann.get("area"):
            rle = _to_rle(ann["segmentation"], height, width)
            if ann.get("bbox") is None:
                ann["bbox"] = mask_util.toBbox(rle).tolist()
            if not ann.get("area"):
                ann["area"] = float(mask_util.area(rle))
        x, y, w, h = ann["bbox"]
        x1, y1, x2, y2 = min(max(x, 0), width), min(max(y, 0), height), min(x + w, width), min(y + h, height)
        if [x1, y1, x2, y2] != [x, y, x + w, y + h]:
            ann["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            clipped += 1
    return clipped


def _is_degenerate(ann: dict, height: int, width: int) -> bool:
    """True for an annotation with a zero-width/height box or an empty segmentation (cheap: nothing rasterised)."""
    if ann["bbox"][2] <= 0 or ann["bbox"][3] <= 0:
        return True
    seg = ann["segmentation"]
    if isinstance(seg, list):  # polygons: all of zero area (shoelace formula)
        return all(abs(np.dot(p[0::2], np.roll(p[1::2], 1)) - np.dot(p[1::2], np.roll(p[0::2], 1))) == 0
                   for p in seg)
    rle = _to_rle(seg, height, width)
    return int(mask_util.area(rle)) == 0


class CocoDataset(torch.utils.data.Dataset):
    """Images and instance targets of any COCO-format instances file.

    image_dir: folder of the images (each image's `file_name` is relative to it); annotation_file: the JSON;
    transforms: optional callable (image, target) -> (image, target), e.g. transforms.Compose([...]);
    check: also open and fully decode every image and every mask now (slow on big sets: the time of one epoch's
    loading), so that a corrupt file or a wrong size is an error before training, not at step 900.

    Item i -> (image Tensor[3, H, W] float in 0..1, target) with
        boxes    Tensor[N, 4] float32 (x1, y1, x2, y2) from the COCO `bbox` field
        labels   Tensor[N] int64, contiguous 1..K (`category_ids[label]` is the COCO category id)
        masks    Tensor[N, H, W] uint8 0/1 (polygons, RLE and uncompressed RLE are all decoded)
        image_id int, the COCO image id
    Images are read by `read_image`: as a viewer shows them (EXIF orientation applied: COCO tools annotate the
    displayed image, so its size must be the JSON's 'height' x 'width'); 16-bit, palette, CMYK, grayscale and
    RGBA files become RGB (alpha dropped: each pixel keeps its stored colour).

    COCO as exported -- handled (the derived values are written into `.coco.dataset`, so evaluation sees them):
        missing `iscrowd` -> 0; missing `bbox`, missing or 0 `area` -> computed from the mask (pycocotools'
        toBbox / area); a box partly past its image -> clipped to the image (one warning gives the count);
        crowd annotations (`iscrowd` = 1) are left out of the targets (as torchvision's detection references do),
        COCO evaluation still sees them through `.coco`; images without instances are kept (N = 0);
        degenerate annotations (zero-size box, empty segmentation) are skipped, with one warning giving their
        count; an annotation whose mask rasterises to nothing at this size is skipped when the item is loaded.
    Refused, every problem at once in one ValueError naming the file, image id, annotation id, field and value
    (the first MAX_REPORTED_PROBLEMS; `check_dataset` returns them all): ids that are not integers (e.g. image
    id "img_001": renumber) or shared by two entries (images, annotations, categories); two categories with one
    name; annotations without a
    mask (`segmentation` missing or [], box-only exports: Mask R-CNN needs masks); boxes entirely outside their
    image, negative box width/height, NaN/inf in a box, polygon or area; image 'height'/'width' that is not a
    positive integer; a `file_name` that is missing or leads outside image_dir (absolute or '..'); unknown image
    or category ids; malformed polygons or RLE. Without `check`, nothing is decoded here: an unreadable image or
    a wrong size is a ValueError naming the file and image id when that item is loaded.
    Attributes: `.coco` (pycocotools COCO), `.image_ids`, `.category_ids` (list, index = contiguous label,
    [0] = 0 for background), `.class_names` (list, [0] = "background"), `.num_skipped`.
    Built in notebooks/00_data.ipynb.
    """

    def __init__(self, image_dir, annotation_file, transforms=None, check: bool = False):
        self.image_dir, self.annotation_file, self.transforms = Path(image_dir), Path(annotation_file), transforms
        data = _read_json(self.annotation_file)
        problems, images, annotations = _json_problems(data, self.annotation_file, self.image_dir)
        if check:
            problems += _decode_problems(self.annotation_file, self.image_dir, images, annotations, progress=False)
        if problems:
            raise ValueError(_problem_report(self.annotation_file, problems))
        clipped = _complete_annotations(data, images)
        if clipped:
            warnings.warn(f"{self.annotation_file}: clipped {clipped} box(es) that extend past their image to the "
                          "image", stacklevel=2)
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
            if ann["iscrowd"]:
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
        image = _dataset_image(self.annotation_file, self.image_dir, info)
        height, width = info["height"], info["width"]
        boxes, labels, masks = [], [], []
        for ann in self._annotations[image_id]:
            mask = _annotation_mask(self.annotation_file, ann, height, width)
            if not mask.any():
                continue
            x, y, w, h = ann["bbox"]
            boxes.append([x, y, x + w, y + h])
            labels.append(self._label_of[ann["category_id"]])
            masks.append(mask)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, height, width), dtype=torch.uint8),
            "image_id": image_id,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
            masks = target.get("masks")
            top = masks.max().item() if masks is not None and masks.numel() else 0
            if masks is not None and (masks.dtype != torch.uint8 or top > 1):
                raise ValueError(f"{self.annotation_file}: image id {image_id}: the transforms returned masks of "
                                 f"dtype {masks.dtype} with values up to {top}; CocoDataset returns uint8 0/1")
        return image, target


def collate(batch):
    """[(image, target), ...] -> (list of images, list of targets): images differ in size, so no stacking.

    The DataLoader collate_fn of notebook 00, engine.train and engine.evaluate."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
