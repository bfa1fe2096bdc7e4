"""Record torchvision's outputs as golden files, so that `make test` compares against torchvision without it.

    .venv-reference/bin/python tests/record_golden.py      (`make test-reference` runs it; torchvision needed)

writes tests/fixtures/golden/
    torchvision_ops.pt        roi_align (sampling ratios -1, 0, 1, 2, aligned or not, float32 and float64, with
                              gradients), roi_pool (two scales, with gradients), MultiScaleRoIAlign, box_iou, nms,
                              batched_nms on fixed inputs (stored with them), and the RoIAlign / RoIPool reprs
    torchvision_maskrcnn.pt   maskrcnn_resnet50_fpn in eval on three small images (stored, uint8): boxes, scores,
                              labels, masks (thresholded at 0.5, the pixels within 1e-4 of 0.5, per-mask sums)
Every file loads with torch.load(weights_only=True). tests/test_parity_golden.py reads them in `make test`.

The model's weights are not stored (170 MB): `seeded_state_dict(SEED)` draws them again, without torchvision, from
torch's CPU generator (uniform draws only: exact integer arithmetic, the same bits on any machine and thread count)
for every key and shape of torchvision's state dict (tests/fixtures/torchvision_maskrcnn_resnet50_fpn_state_dict_
shapes.json), each scaled for its role so that activations stay of order one through the 50 layers (He-like bounds,
norm layers close to the identity with a small residual-branch gain) and the RPN, class and mask logits spread out
enough for varied detections. Torchvision loads them as they are; the test converts them with
minimaskrcnn.weights.from_torchvision, as a user would torchvision's own file. A digest of the weights is stored too,
so a test can tell "our model differs from torchvision" from "the weights were drawn differently".
"""
import hashlib
import json
import math
import sys
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
OPS_FILE, MODEL_FILE = GOLDEN / "torchvision_ops.pt", GOLDEN / "torchvision_maskrcnn.pt"
SHAPES = FIXTURES / "torchvision_maskrcnn_resnet50_fpn_state_dict_shapes.json"
SEED = 2026
# The reference configuration except for sizes far below 800 / 1333 and fewer proposals and detections, so that
# the comparison stays quick on a CPU (the same code paths run). Keyword arguments of maskrcnn_resnet50_fpn; ours:
MIN_SIZE, MAX_SIZE, PROPOSALS, DETECTIONS = 192, 256, 300, 15
TORCHVISION_KWARGS = dict(min_size=MIN_SIZE, max_size=MAX_SIZE, rpn_post_nms_top_n_test=PROPOSALS,
                          box_detections_per_img=DETECTIONS)
OUR_OVERRIDES = dict(min_size=MIN_SIZE, max_size=MAX_SIZE, rpn_post_nms_top_n_test=PROPOSALS,
                     detections_per_img=DETECTIONS)
MASK_BORDER = 1e-4  # a mask pixel this close to 0.5 may land on either side of the threshold (float noise)


# ------------------------------------------------------------------------------------------------ seeded weights
def _bound(name: str, shape: tuple) -> tuple[float, float]:
    """(low, high) of the uniform draw for one tensor of torchvision's Mask R-CNN state dict."""
    if name.endswith("running_mean") or (name.endswith(".bias") and len(shape) == 1 and ".bn" in name):
        return -0.1, 0.1
    if name.endswith("running_var"):
        return 0.5, 1.5
    is_norm = ".bn" in name or "downsample.1" in name
    if is_norm and name.endswith(".weight"):  # residual branches (bn3) and shortcuts enter the sum with a small gain
        return (0.1, 0.3) if (".bn3." in name or "downsample.1" in name) else (0.5, 1.5)
    if name.endswith("downsample.1.bias"):
        return -0.1, 0.1
    if name.endswith(".bias"):
        return -0.01, 0.01
    fan_in = shape[0] if name.endswith("conv5_mask.weight") else math.prod(shape[1:])  # transposed: (in, out, k, k)
    gain = {"rpn.head.cls_logits.weight": 12.0, "roi_heads.box_predictor.cls_score.weight": 6.0,
            "rpn.head.bbox_pred.weight": 0.5, "roi_heads.box_predictor.bbox_pred.weight": 0.5,
            "roi_heads.mask_predictor.mask_fcn_logits.weight": 6.0,
            }.get(name, 2.0 if len(shape) == 4 else 1.0)  # He for ReLU convolutions, variance-keeping elsewhere
    bound = math.sqrt(3 * gain / fan_in)
    return -bound, bound


def seeded_state_dict(seed: int = SEED) -> dict:
    """torchvision's maskrcnn_resnet50_fpn state dict (its names, shapes and order), drawn from `seed` alone."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in json.loads(SHAPES.read_text())["keys"].items():
        if name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(0)
            continue
        low, high = _bound(name, tuple(shape))
        out[name] = torch.rand(shape, generator=generator) * (high - low) + low
    return out


def digest(state_dict: dict) -> str:
    """SHA-256 of every tensor's name, shape, dtype and bytes, in order."""
    h = hashlib.sha256()
    for name, value in state_dict.items():
        h.update(f"{name}{tuple(value.shape)}{value.dtype}".encode())
        h.update(value.contiguous().numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ masks, compactly
def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """bool Tensor (any shape) -> uint8 Tensor[ceil(numel / 8)], 8 pixels a byte (first pixel in the lowest bit)."""
    flat = torch.cat((mask.flatten().to(torch.uint8), mask.new_zeros((-mask.numel()) % 8, dtype=torch.uint8)))
    return (flat.view(-1, 8) * (2 ** torch.arange(8)).to(torch.uint8)).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape) -> torch.Tensor:
    """The inverse of pack_bits: -> bool Tensor[shape]."""
    bits = (packed[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1  # (B,) -> (B, 8)
    return bits.flatten()[: math.prod(shape)].view(shape).bool()


# ------------------------------------------------------------------------------------------------ fixed inputs
def golden_images() -> list[torch.Tensor]:
    """Three small uint8 images of different sizes and aspect ratios (crops of matplotlib's sample photo)."""
    import matplotlib.cbook
    import matplotlib.image

    photo = torch.from_numpy(matplotlib.image.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).copy())
    photo = photo.permute(2, 0, 1)  # (600, 512, 3) -> (3, 600, 512) uint8

    def resized(crop, size):
        return torch.nn.functional.interpolate(crop[None].float(), size=size, mode="area")[0].round().to(torch.uint8)

    return [resized(photo, (150, 128)), resized(photo[:, 180:380], (90, 230)),
            resized(photo[:, 100:500, 60:360], (160, 120))]


def spread_rois(generator, num, batch, height, width, scale, dtype):
    """Tensor[num, 5] (batch index, x1, y1, x2, y2): boxes over and past a height x width map at `scale`."""
    xy = torch.rand(num, 2, generator=generator, dtype=torch.float64) * torch.tensor([width, height]) / scale * 1.2 - 3
    wh = torch.rand(num, 2, generator=generator, dtype=torch.float64) * torch.tensor([width, height]) / scale * 0.8
    index = torch.randint(0, batch, (num, 1), generator=generator).to(torch.float64)
    rois = torch.cat((index, xy, xy + wh), dim=1)
    rois[0, 3:] = rois[0, 1:3]  # a zero-size box
    return rois.to(dtype)


def clustered_boxes(generator, num=1500, clusters=60) -> torch.Tensor:
    """Tensor[num, 4] float32: jittered copies of a few boxes up to ~1000 px, like raw detections around objects."""
    xy = torch.rand(clusters, 2, generator=generator) * 900
    centres = torch.cat((xy, xy + 8 + torch.rand(clusters, 2, generator=generator) * 300), 1)
    boxes = centres[torch.randint(0, clusters, (num,), generator=generator)]
    boxes = boxes + torch.randn(num, 4, generator=generator) * 4
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    return boxes


# ------------------------------------------------------------------------------------------------ recording
def record_ops(tv) -> dict:
    g = torch.Generator().manual_seed(7)
    out = {"reprs": {"RoIAlign(7, 0.5, 2)": repr(tv.ops.RoIAlign(7, 0.5, 2)),
                     "RoIAlign((7, 6), 0.25, -1, True)": repr(tv.ops.RoIAlign((7, 6), 0.25, -1, True)),
                     "RoIPool((5, 3), 0.5)": repr(tv.ops.RoIPool((5, 3), 0.5))}}
    align = []
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(3, 5, 13, 17, generator=g, dtype=dtype)
        rois = spread_rois(g, 24, 3, 13, 17, 0.5, dtype)
        grad = torch.randn(24, 5, 7, 6, generator=g, dtype=dtype)
        for sampling_ratio in (-1, 0, 1, 2):
            for aligned in (False, True):
                xg = x.clone().requires_grad_()
                result = tv.ops.roi_align(xg, rois, (7, 6), 0.5, sampling_ratio, aligned)
                (x_grad,) = torch.autograd.grad(result, xg, grad)
                align.append({"input": x, "rois": rois, "output_size": (7, 6), "spatial_scale": 0.5,
                              "sampling_ratio": sampling_ratio, "aligned": aligned, "grad_out": grad,
                              "output": result.detach(), "input_grad": x_grad})
    out["roi_align"] = align
    pool = []
    for scale in (1.0, 0.25):
        x = torch.randn(2, 4, 11, 9, generator=g, dtype=torch.float64, requires_grad=True)
        rois = spread_rois(g, 30, 2, 11, 9, scale, torch.float64)
        grad = torch.randn(30, 4, 5, 3, generator=g, dtype=torch.float64)
        result = tv.ops.roi_pool(x, rois, (5, 3), scale)
        (x_grad,) = torch.autograd.grad(result, x, grad)
        pool.append({"input": x.detach(), "rois": rois, "output_size": (5, 3), "spatial_scale": scale,
                     "grad_out": grad, "output": result.detach(), "input_grad": x_grad})
    out["roi_pool"] = pool
    feats = {f"p{k}": torch.randn(2, 4, 256 // 2**k, 192 // 2**k, generator=g) for k in (2, 3, 4, 5)}
    whole_image = torch.tensor([[0.0, 0, 199, 179]])  # a box for the coarsest level
    boxes = [spread_rois(g, 25, 1, 256, 192, 1.0, torch.float32)[:, 1:],
             torch.cat((spread_rois(g, 15, 1, 200, 180, 1.0, torch.float32)[:, 1:], whole_image))]
    sizes = [(256, 192), (200, 180)]
    out["multiscale"] = {"features": feats, "boxes": boxes, "image_sizes": sizes, "output_size": 7, "sampling_ratio": 2,
                         "output": tv.ops.MultiScaleRoIAlign(list(feats), 7, 2)(feats, boxes, sizes)}
    boxes = clustered_boxes(g)
    scores = torch.rand(len(boxes), generator=g)
    idxs = torch.randint(0, 4, (len(boxes),), generator=g)
    out["boxes"] = {"boxes": boxes, "scores": scores, "idxs": idxs, "iou_rows": 64,
                    "box_iou": tv.ops.box_iou(boxes[:64], boxes[:400]),
                    "nms": {t: tv.ops.nms(boxes, scores, t) for t in (0.3, 0.5, 0.7)},
                    "batched_nms": {t: tv.ops.batched_nms(boxes, scores, idxs, t) for t in (0.3, 0.5, 0.7)}}
    return out


def freeze_batch_norms(module, frozen_cls) -> None:
    """Every BatchNorm2d -> frozen_cls (torchvision's FrozenBatchNorm2d) with its statistics, as in its published model.
    Also used by tests/test_parity.py."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            frozen = frozen_cls(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key))
            setattr(module, name, frozen)
        else:
            freeze_batch_norms(child, frozen_cls)


@torch.no_grad()
def record_model(tv) -> dict:
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    from torchvision.ops.misc import FrozenBatchNorm2d

    state = seeded_state_dict(SEED)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **TORCHVISION_KWARGS)
    model.load_state_dict(state, strict=True)
    freeze_batch_norms(model, FrozenBatchNorm2d)
    images = golden_images()
    detections = model.eval()([im.float() / 255 for im in images])
    results = []
    for det in detections:
        probs = det["masks"][:, 0]  # (D, 1, H, W) -> (D, H, W)
        border = ((probs - 0.5).abs() < MASK_BORDER).flatten().nonzero()[:, 0]
        results.append({"boxes": det["boxes"], "scores": det["scores"], "labels": det["labels"],
                        "mask_shape": tuple(probs.shape), "mask_bits": pack_bits(probs > 0.5),
                        "mask_border": border, "mask_sums": probs.double().sum((1, 2))})
    return {"seed": SEED, "weights_digest": digest(state), "our_overrides": OUR_OVERRIDES, "images": images,
            "detections": results}


def main() -> None:
    import torchvision as tv

    # one thread: the same bits on every run of a machine (thread counts change float sums), so re-recording with
    # an unchanged torchvision leaves the files unchanged in git
    torch.set_num_threads(1)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    versions = {"torch": str(torch.__version__), "torchvision": str(tv.__version__)}
    for path, record in ((OPS_FILE, record_ops), (MODEL_FILE, record_model)):
        torch.manual_seed(0)
        data = {"versions": versions, **record(tv)}
        torch.save(data, path)
        torch.load(path, weights_only=True)  # the tests read it so: plain tensors, numbers, strings, containers
        print(f"{path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}: "
              f"{path.stat().st_size / 2**10:.0f} KiB ({versions})")


if __name__ == "__main__":
    sys.exit(main())
