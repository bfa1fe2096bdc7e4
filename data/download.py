"""Fetch real COCO-format datasets into data/ (needs internet; nothing in the tests downloads).

usage:
    python data/download.py pennfudan            # 170 images, 1 class (~53 MB) -> data/pennfudan/{train,val}
    python data/download.py coco --splits val    # COCO 2017 val (~1 GB)         -> data/coco/val
    python data/download.py coco --splits train val   # + train2017 (~19 GB)

Each split ends up as <split>/images/ + <split>/annotations.json, the layout `python -m minimaskrcnn` and
`minimaskrcnn.data.CocoDataset(split / "images", split / "annotations.json")` read.
Penn-Fudan ships instance masks as PNGs (pixel value k = pedestrian k); `convert_penn_fudan` turns them into a
COCO instances file with RLE masks (tests/test_data.py checks it on a tiny fake folder).
"""
import argparse
import json
import random
import shutil
import sys
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

HERE = Path(__file__).resolve().parent
PENN_FUDAN_URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"
COCO_URLS = {
    "train": "http://images.cocodataset.org/zips/train2017.zip",
    "val": "http://images.cocodataset.org/zips/val2017.zip",
    "annotations": "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
}


def download(url: str, dest: Path) -> Path:
    """Download `url` to `dest` (skipped when it exists), through a .part file so an interrupted run is redone."""
    if dest.exists():
        print(f"{dest} already there")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    print(f"downloading {url}")
    with urllib.request.urlopen(url) as response, open(part, "wb") as f:
        total, done = int(response.headers.get("Content-Length", 0)), 0
        while chunk := response.read(1 << 20):
            f.write(chunk)
            done += len(chunk)
            if total:
                print(f"\r  {done / 1e6:.0f} / {total / 1e6:.0f} MB", end="", flush=True)
    print()
    part.rename(dest)
    return dest


def extract(archive: Path, dest: Path) -> None:
    print(f"extracting {archive.name} into {dest}")
    with zipfile.ZipFile(archive) as z:
        z.extractall(dest)


def convert_penn_fudan(src: Path, out: Path, num_val: int = 50, seed: int = 0) -> dict:
    """PennFudanPed/{PNGImages, PedMasks} -> out/train and out/val, each images/ + annotations.json (COCO, RLE).

    Mask PNG FudanPed00001_mask.png belongs to image FudanPed00001.png; its pixel value k > 0 marks pedestrian k.
    Images are shuffled with `seed`, the first `num_val` go to val. Returns {split: number of images}.
    """
    src, out = Path(src), Path(out)
    image_paths = sorted((src / "PNGImages").glob("*.png"))
    if not image_paths:
        raise FileNotFoundError(f"convert_penn_fudan: no PNG images in {src / 'PNGImages'}")
    random.Random(seed).shuffle(image_paths)
    splits = {"val": image_paths[:num_val], "train": image_paths[num_val:]}
    counts = {}
    for split, paths in splits.items():
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id, path in enumerate(sorted(paths), start=1):
            mask_path = src / "PedMasks" / f"{path.stem}_mask.png"
            if not mask_path.is_file():
                raise FileNotFoundError(f"convert_penn_fudan: {path.name} has no mask {mask_path}")
            ids = np.asarray(Image.open(mask_path))
            width, height = Image.open(path).size
            if ids.shape != (height, width):
                raise ValueError(f"convert_penn_fudan: {mask_path} is {ids.shape}, image {path} is {(height, width)}")
            shutil.copyfile(path, out / split / "images" / path.name)
            images.append({"id": image_id, "file_name": path.name, "height": height, "width": width})
            for k in np.unique(ids[ids > 0]):
                mask = np.asfortranarray((ids == k).astype(np.uint8))
                rle = mask_util.encode(mask)
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                                    "area": float(mask_util.area(rle)), "bbox": mask_util.toBbox(rle).tolist(),
                                    "iscrowd": 0})
        coco = {"images": images, "annotations": annotations,
                "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}
        (out / split / "annotations.json").write_text(json.dumps(coco))
        counts[split] = len(images)
    return counts


def link_coco_split(root: Path, split: str) -> Path:
    """data/coco/<split>/{images -> ../<split>2017, annotations.json -> ../annotations/instances_<split>2017.json}."""
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in (("images", Path("..") / f"{split}2017"),
                         ("annotations.json", Path("..") / "annotations" / f"instances_{split}2017.json")):
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(target)
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True)
    p = sub.add_parser("pennfudan", help="Penn-Fudan pedestrians, converted to COCO format")
    p.add_argument("--out", type=Path, default=HERE / "pennfudan")
    p.add_argument("--num-val", type=int, default=50)
    c = sub.add_parser("coco", help="COCO 2017 instances")
    c.add_argument("--out", type=Path, default=HERE / "coco")
    c.add_argument("--splits", nargs="+", choices=("train", "val"), default=["val"])
    args = parser.parse_args(argv)
    if args.dataset == "pennfudan":
        archive = download(PENN_FUDAN_URL, args.out / "PennFudanPed.zip")
        extract(archive, args.out)
        counts = convert_penn_fudan(args.out / "PennFudanPed", args.out, num_val=args.num_val)
        print(f"wrote {args.out}/train ({counts['train']} images) and {args.out}/val ({counts['val']} images)")
    else:
        extract(download(COCO_URLS["annotations"], args.out / "annotations_trainval2017.zip"), args.out)
        for split in args.splits:
            extract(download(COCO_URLS[split], args.out / f"{split}2017.zip"), args.out)
            print(f"ready: {link_coco_split(args.out, split)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
