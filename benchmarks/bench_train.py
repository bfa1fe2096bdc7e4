"""Training-step and inference speed (images/s) and peak memory, ours vs torchvision's MaskRCNN.

    .venv/bin/python benchmarks/bench_train.py                      # ours only (torchvision does not import)
    .venv-reference/bin/python benchmarks/bench_train.py            # ours and torchvision, same run, same torch
    python benchmarks/bench_train.py --preset r50_fpn --device cuda --image-size 800 --batch-size 4

Each implementation runs in its own subprocess (so peak memory is its own) on the same shapes images.
torchvision's MaskRCNN is given the preset's image size, anchors, RPN and RoI settings in two variants:
  tv-same      the same network as ours (our backbone + FPN inside torchvision's MaskRCNN, same head widths):
               differences come from the detection code only (transform, RPN, RoI heads, roi_align, NMS);
  tv-same-nhwc tv-same with its conv weights channels-last (NHWC), as our tiny preset lays them out;
  tv-standard  torchvision's own ResNet-FPN backbone of the same depth and its standard head widths
               (256 FPN channels, 1024 box representation, 256 mask convs), i.e. what you get by default.
Peak memory: max CUDA allocation on GPU, peak resident set size of the subprocess on CPU.

Measured on one NVIDIA H100 80GB (torch 2.11.0+cu130, torchvision 0.26, bf16 autocast), 2026-11-23,
`--preset r50_fpn --device cuda --image-size 800 --batch-size 4`, roi_ops of commit 3830a6d, nms in blocks of 4096:
    impl         train img/s  infer img/s  peak MB
    ours               38.54       144.20     3552
    tv-same            56.72       121.17     3512
    tv-standard        67.76       177.19     3513
    ours / tv-same: train 0.68x, inference 1.19x;  ours / tv-standard: train 0.57x, inference 0.81x
An earlier run on another H100 (same roi_ops, nms in blocks of 256): ours 28.13 / 109.26, tv-same 54.32 / 119.18,
tv-standard 59.33 / 97.41 img/s (train / inference): the figures move a lot between runs. With the previous roi_ops
(commit 4441b10, matmul-based) ours measured 35.21 / 161.10 img/s and 5305 MB peak in that run.
Profile of that earlier run (torch.profiler, 3 steps after 3 warm-up steps): ours is CPU-bound. r50_fpn 800 px batch 4:
the GPU is busy 78 ms of a 142 ms step. Notebook 11's GPU configuration (GroupNorm, 256 px, batch 8, reference
proposal counts): busy 81 ms of a 434 ms step, with per step about 13,000 kernel launches, 455 nonzero and 550 item
calls (host syncs), 418 NMS fixed-point rounds (torch.equal) and 2,400 dtype copies (aten::copy_, 16 % of GPU time).

Measured on this project's 2-core CPU, quiet, 2026-11-23 08:13 UTC, `.venv-reference/bin/python
benchmarks/bench_train.py --steps 10 --warmup 3` (tiny preset of commit 25fb519 with channels-last weights, run at
128 px, batch 4, 2 threads, torch 2.15.0+cu132, torchvision 0.29.2):
    impl         train img/s  infer img/s  peak MB
    ours               26.91        35.24      857
    tv-same            22.05        17.77      899
    tv-same-nhwc       21.95        32.03      856
    tv-standard         3.58         6.31     1358
    ours / tv-same: train 1.22x, inference 1.98x;  ours / tv-same-nhwc: train 1.23x, inference 1.10x;
    ours / tv-standard: train 7.51x, inference 5.58x
The 2x train-step target against tv-same is not reached: a profile of our step (2 threads; torch.profiler, 5 steps)
puts convolution forward and backward at about 59 % of it (49 % with channels-last), and those are the same network
in both; the rest is about 5,300 small ops per step (IoU, NMS rounds, sampling, roi_align's tap tables).
Channels-last weights barely move the train step (an A/B of our model in one process: 1.05x at 2 threads, 1.14x at
1 thread, medians, noisy) but roughly double inference, for torchvision's model too. The earlier run (05:12, before
channels-last): ours 27.68 / 18.31, tv-same 22.71 / 26.42 (train 1.22x, inference 0.69x).
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
