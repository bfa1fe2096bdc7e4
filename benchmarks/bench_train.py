"""Training-step and inference speed (images/s) and peak memory, ours vs torchvision's MaskRCNN.

    .venv/bin/python benchmarks/bench_train.py                      # ours only (torchvision does not import)
    .venv-reference/bin/python benchmarks/bench_train.py            # ours and torchvision, same run, same torch
    python benchmarks/bench_train.py --preset r50_fpn --device cuda --image-size 800 --batch-size 4

Each implementation runs in its own subprocess (so peak memory is its own) on the same shapes images.
torchvision's MaskRCNN is given the preset's image size, anchors, RPN and RoI settings in three variants:
  tv-same      the same network as ours (our backbone + FPN inside torchvision's MaskRCNN, same head widths):
               differences come from the detection code only (transform, RPN, RoI heads, roi_align, NMS);
  tv-same-nhwc tv-same with its conv weights channels-last (NHWC), as our tiny preset lays them out;
  tv-standard  torchvision's own ResNet-FPN backbone of the same depth and its standard head widths
               (256 FPN channels, 1024 box representation, 256 mask convs), i.e. what you get by default.
Peak memory: max CUDA allocation on GPU, peak resident set size of the subprocess on CPU.

Figures, with the date, machine and command of each run: BENCHMARKS.md ("Speed against torchvision").
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import torch


def load_batch(image_size, batch_size):
    from minimaskrcnn.data import CocoDataset, make_shapes

    folder = tempfile.mkdtemp(prefix="bench_train_")
    ann = make_shapes(folder, num_images=batch_size, image_size=image_size, seed=0)
    ds = CocoDataset(f"{folder}/images", ann)
    images, targets = zip(*[ds[i] for i in range(batch_size)])
    return list(images), [{k: v for k, v in t.items() if k != "image_id"} for t in targets], len(ds.class_names)


def build(impl, preset, num_classes, image_size):
    from minimaskrcnn.model import PRESETS, build_model

    cfg = PRESETS[preset]
    size = {"min_size": image_size, "max_size": max(cfg.max_size, image_size)}
    if impl == "ours":
        return build_model(preset, num_classes, **size)
    from dataclasses import replace

    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    cfg = replace(cfg, **size)
    if impl in ("tv-same", "tv-same-nhwc"):
        from minimaskrcnn.backbone import build_backbone

        backbone = build_backbone(cfg.backbone_depth, cfg.backbone_norm, cfg.trainable_layers, cfg.fpn_channels,
                                  cfg.base_width)
        names, rep, mask_layers, mask_dim = ["p2", "p3", "p4", "p5"], cfg.representation_size, cfg.mask_head_layers, cfg.mask_dim_reduced
    else:
        backbone = resnet_fpn_backbone(backbone_name=f"resnet{cfg.backbone_depth}", weights=None,
                                       trainable_layers=min(cfg.trainable_layers, 5))
        names, rep, mask_layers, mask_dim = ["0", "1", "2", "3"], 1024, (256, 256, 256, 256), 256
    ch = backbone.out_channels
    model = MaskRCNN(
        backbone, num_classes=None, min_size=cfg.min_size, max_size=cfg.max_size, image_mean=list(cfg.image_mean),
        image_std=list(cfg.image_std), rpn_anchor_generator=AnchorGenerator(cfg.anchor_sizes, cfg.aspect_ratios),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_nms_thresh=cfg.rpn_nms_thresh, rpn_fg_iou_thresh=cfg.rpn_fg_iou_thresh,
        rpn_bg_iou_thresh=cfg.rpn_bg_iou_thresh, rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_roi_pool=MultiScaleRoIAlign(names, cfg.box_roi_size, cfg.sampling_ratio),
        box_head=TwoMLPHead(ch * cfg.box_roi_size**2, rep), box_predictor=FastRCNNPredictor(rep, num_classes),
        box_score_thresh=cfg.box_score_thresh, box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.detections_per_img, box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_positive_fraction=cfg.box_positive_fraction,
        mask_roi_pool=MultiScaleRoIAlign(names, cfg.mask_roi_size, cfg.sampling_ratio),
        mask_head=MaskRCNNHeads(ch, list(mask_layers), 1),
        mask_predictor=MaskRCNNPredictor(mask_layers[-1], mask_dim, num_classes))
    if impl == "tv-same-nhwc":  # tv-same with our channels-last layout: how much of the difference is the layout
        model.to(memory_format=torch.channels_last)
    return model


def measure(args):
    """One implementation in this process: prints a JSON line of its figures."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    images, targets, num_classes = load_batch(args.image_size, args.batch_size)
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    model = build(args.impl, args.preset, num_classes, args.image_size).to(device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
    amp = device.type == "cuda" and not args.no_amp
    dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=amp):
            model(images)

    out = {"impl": args.impl, "preset": args.preset, "device": str(device), "batch": args.batch_size,
           "image_size": args.image_size, "threads": torch.get_num_threads(), "torch": torch.__version__}
    for name, fn, mode in (("train", train_step, model.train), ("infer", infer, model.eval)):
        mode()
        for _ in range(args.warmup):
            fn()
        sync()
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        times.sort()
        out[f"{name}_images_per_s"] = args.batch_size / times[len(times) // 2]  # median step
    if device.type == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--no-amp", action="store_true", help="fp32 on CUDA")
    p.add_argument("--impl", choices=("ours", "tv-same", "tv-same-nhwc", "tv-standard"),
                   help="measure one in this process")
    args = p.parse_args()
    if args.impl:
        return measure(args)
    try:
        import torchvision  # noqa: F401

        impls = ["ours", "tv-same", "tv-same-nhwc", "tv-standard"]
    except ImportError:
        impls = ["ours"]
        print("torchvision does not import here: measuring ours only (run with .venv-reference/bin/python to compare)")
    rows = []
    for impl in impls:
        cmd = [sys.executable, __file__, "--impl", impl] + sys.argv[1:]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"{impl}: failed\n{res.stderr[-2000:]}")
            continue
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"{'impl':<12} {'device':<7} {'train img/s':>11} {'infer img/s':>11} {'peak MB':>8}   "
          f"(preset {args.preset}, {args.image_size} px, batch {args.batch_size}, torch {rows[0]['torch'] if rows else '?'}, "
          f"{rows[0]['threads'] if rows else '?'} threads)")
    for r in rows:
        print(f"{r['impl']:<12} {r['device']:<7} {r['train_images_per_s']:>11.2f} {r['infer_images_per_s']:>11.2f} "
              f"{r['peak_mem_mb']:>8.0f}")
    ours = next((r for r in rows if r["impl"] == "ours"), None)
    for r in rows:
        if ours and r is not ours:
            print(f"ours / {r['impl']}: train step {ours['train_images_per_s'] / r['train_images_per_s']:.2f}x, "
                  f"inference {ours['infer_images_per_s'] / r['infer_images_per_s']:.2f}x faster")


if __name__ == "__main__":
    main()
