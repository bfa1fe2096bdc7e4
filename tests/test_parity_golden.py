"""Parity with torchvision in every test run, without torchvision: our ops and our model against its recorded outputs.

tests/record_golden.py (run by `make test-reference`, where torchvision imports) wrote tests/fixtures/golden/; see its
docstring for what is recorded. tests/test_parity.py compares stage by stage with a live torchvision instead.
"""
import pytest
import torch

from minimaskrcnn import ops
from minimaskrcnn.model import build_model
from minimaskrcnn.roi_ops import MultiScaleRoIPooler
from minimaskrcnn.weights import from_torchvision
from record_golden import MASK_BORDER, MODEL_FILE, OPS_FILE, digest, seeded_state_dict, unpack_bits


@pytest.fixture(scope="module")
def golden_ops():
    return torch.load(OPS_FILE, weights_only=True)


@pytest.fixture(scope="module")
def golden_model():
    return torch.load(MODEL_FILE, weights_only=True)


def assert_close(what: str, ours: torch.Tensor, theirs: torch.Tensor, atol: float) -> None:
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)}, torchvision's {tuple(theirs.shape)}"
    diff = (ours.double() - theirs.double()).abs().max().item() if ours.numel() else 0.0
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} from torchvision's > {atol:g}"


# ------------------------------------------------------------------------------------------------ ops
def test_roi_align_equals_torchvision(golden_ops):
    """Sampling ratios -1, 0, 1, 2, aligned or not, float32 and float64: values and gradients."""
    assert len(golden_ops["roi_align"]) == 16
    for case in golden_ops["roi_align"]:
        what = (f"roi_align {case['input'].dtype} sampling_ratio={case['sampling_ratio']} "
                f"aligned={case['aligned']}")
        x = case["input"].clone().requires_grad_()
        out = ops.roi_align(x, case["rois"], case["output_size"], case["spatial_scale"], case["sampling_ratio"],
                            case["aligned"])
        (grad,) = torch.autograd.grad(out, x, case["grad_out"])
        atol = 1e-5 if x.dtype == torch.float32 else 1e-12
        assert_close(what, out, case["output"], atol)
        assert_close(what + " gradient", grad, case["input_grad"], atol)


def test_roi_pool_equals_torchvision(golden_ops):
    for case in golden_ops["roi_pool"]:
        x = case["input"].clone().requires_grad_()
        out = ops.roi_pool(x, case["rois"], case["output_size"], case["spatial_scale"])
        (grad,) = torch.autograd.grad(out, x, case["grad_out"])
        assert torch.equal(out, case["output"]), f"roi_pool scale {case['spatial_scale']}"  # a max: exact
        assert_close(f"roi_pool scale {case['spatial_scale']} gradient", grad, case["input_grad"], 1e-12)


def test_multiscale_pooler_equals_torchvision_multiscale_roi_align(golden_ops):
    case = golden_ops["multiscale"]
    pooler = MultiScaleRoIPooler(list(case["features"]), case["output_size"], case["sampling_ratio"])
    assert_close("MultiScaleRoIPooler", pooler(case["features"], case["boxes"], case["image_sizes"]), case["output"],
                 1e-5)


def test_box_iou_nms_batched_nms_equal_torchvision(golden_ops):
    case = golden_ops["boxes"]
    boxes, scores, idxs, rows = case["boxes"], case["scores"], case["idxs"], case["iou_rows"]
    assert_close("box_iou", ops.box_iou(boxes[:rows], boxes[: case["box_iou"].shape[1]]), case["box_iou"], 1e-6)
    for threshold, keep in case["nms"].items():
        assert torch.equal(ops.nms(boxes, scores, threshold), keep), f"nms at {threshold}"
        assert 50 < len(keep) < len(boxes)  # NMS removed boxes, and kept many
    for threshold, keep in case["batched_nms"].items():
        assert torch.equal(ops.batched_nms(boxes, scores, idxs, threshold), keep), f"batched_nms at {threshold}"


def test_module_reprs_equal_torchvision(golden_ops):
    ours = {"RoIAlign(7, 0.5, 2)": ops.RoIAlign(7, 0.5, 2),
            "RoIAlign((7, 6), 0.25, -1, True)": ops.RoIAlign((7, 6), 0.25, -1, True),
            "RoIPool((5, 3), 0.5)": ops.RoIPool((5, 3), 0.5)}
    assert {k: repr(v) for k, v in ours.items()} == golden_ops["reprs"]


# ------------------------------------------------------------------------------------------------ the model
@pytest.fixture(scope="module")
def seeded(golden_model):
    return seeded_state_dict(golden_model["seed"])


def test_seeded_weights_are_the_recorded_ones_on_any_thread_count(golden_model, seeded):
    """The weights torchvision's outputs were recorded with come back bit for bit (another process, another torch
    build, another thread count): a failure below is then a difference of the models, not of their weights."""
    assert digest(seeded) == golden_model["weights_digest"]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        assert digest(seeded_state_dict(golden_model["seed"])) == golden_model["weights_digest"]
    finally:
        torch.set_num_threads(threads)


def test_recorded_detections_are_not_degenerate(golden_model):
    """The comparison below only means something if torchvision found varied detections on every image."""
    for i, det in enumerate(golden_model["detections"]):
        assert len(det["boxes"]) >= 10, f"image {i}: only {len(det['boxes'])} detections"
        assert len(det["labels"].unique()) >= 2, f"image {i}: one label"
        assert det["scores"].max() - det["scores"].min() > 0.05, f"image {i}: scores all alike"
        assert ((det["boxes"][:, 2:] - det["boxes"][:, :2]) > 1).all(), f"image {i}: degenerate boxes"
        assert (det["mask_sums"] > 1).all(), f"image {i}: empty masks"


@torch.no_grad()
def test_model_equals_torchvision_maskrcnn_resnet50_fpn(golden_model, seeded):
    """Our r50_fpn with torchvision's (seeded) state dict converted by from_torchvision, in eval on the recorded images:
    the same detections -- labels exactly, boxes to 1e-3 px, scores to 1e-4, every mask pixel on the same side of 0.5
    (except pixels torchvision put within 1e-4 of it), each mask's summed probability to 1e-3 per 1000 pixels."""
    model = build_model("r50_fpn", 91, **golden_model["our_overrides"])
    model.load_state_dict(from_torchvision(seeded), strict=True)
    images = [image.float() / 255 for image in golden_model["images"]]
    for i, (ours, theirs) in enumerate(zip(model.eval()(images), golden_model["detections"])):
        where = f"image {i}"
        assert len(ours["boxes"]) == len(theirs["boxes"]), f"{where}: {len(ours['boxes'])} vs {len(theirs['boxes'])}"
        assert torch.equal(ours["labels"], theirs["labels"]), f"{where}: labels differ"
        assert_close(f"{where} boxes", ours["boxes"], theirs["boxes"], 1e-3)
        assert_close(f"{where} scores", ours["scores"], theirs["scores"], 1e-4)
        probs = ours["masks"][:, 0]  # (D, 1, H, W) -> (D, H, W)
        assert tuple(probs.shape) == theirs["mask_shape"]
        differ = (probs > 0.5) != unpack_bits(theirs["mask_bits"], theirs["mask_shape"])
        differ.view(-1)[theirs["mask_border"]] = False  # within MASK_BORDER of 0.5 in torchvision: either side
        assert not differ.any(), f"{where}: {int(differ.sum())} mask pixels on the other side of 0.5"
        pixels = probs[0].numel()
        assert_close(f"{where} mask sums", probs.double().sum((1, 2)), theirs["mask_sums"], 1e-3 * pixels / 1000)
