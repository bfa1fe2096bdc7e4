"""minimaskrcnn.ops: the RoIAlign / RoIPool modules behave as the functions, and every op is a torch.fx leaf."""
import pytest
import torch
import torch.fx
from torch import nn

from minimaskrcnn import boxes, ops, roi_ops
from minimaskrcnn.ops import RoIAlign, RoIPool, batched_nms, box_iou, nms, roi_align, roi_pool


def case(seed=0):
    """A 2-image map, boxes as Tensor[K, 5] and the same boxes as a list of Tensor[L, 4] per image."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 12, 10, generator=g, dtype=torch.float64)
    xy = torch.rand(7, 2, generator=g, dtype=torch.float64) * 18 - 2
    rois = torch.cat((torch.tensor([[0.0], [1], [0], [1], [1], [0], [1]], dtype=torch.float64), xy,
                      xy + torch.rand(7, 2, generator=g, dtype=torch.float64) * 9), dim=1)
    as_list = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    in_list_order = torch.cat([rois[rois[:, 0] == i] for i in range(2)])
    return x, rois, as_list, in_list_order


@pytest.mark.parametrize("settings", [(7, 0.5, 2, False), ((3, 4), 1.0, -1, True), (5, 0.25, 0, False)])
def test_roi_align_module_equals_the_function_in_both_box_formats(settings):
    x, rois, as_list, in_list_order = case()
    layer = RoIAlign(*settings)
    assert torch.equal(layer(x, rois), roi_ops.roi_align(x, rois, *settings))
    assert torch.equal(layer(x, as_list), roi_ops.roi_align(x, in_list_order, *settings))
    x.requires_grad_()
    (grad,) = torch.autograd.grad(layer(x, rois).square().sum(), x)
    (expected,) = torch.autograd.grad(roi_ops.roi_align(x, rois, *settings).square().sum(), x)
    assert torch.equal(grad, expected)


@pytest.mark.parametrize("settings", [(7, 0.5), ((3, 2), 1.0)])
def test_roi_pool_module_equals_the_function_in_both_box_formats(settings):
    x, rois, as_list, in_list_order = case(1)
    layer = RoIPool(*settings)
    assert torch.equal(layer(x, rois), roi_ops.roi_pool(x, rois, *settings))
    assert torch.equal(layer(x, as_list), roi_ops.roi_pool(x, in_list_order, *settings))


def test_modules_hold_their_settings_and_no_parameters():
    layer = RoIAlign((7, 6), 0.25, -1, aligned=True)
    assert (layer.output_size, layer.spatial_scale, layer.sampling_ratio, layer.aligned) == ((7, 6), 0.25, -1, True)
    assert RoIAlign(7, 0.5, 2).aligned is False  # torchvision's default
    assert list(layer.parameters()) == [] and list(RoIPool(7, 0.5).parameters()) == []


def test_malformed_boxes_keep_their_errors_through_the_modules():
    x = torch.zeros(1, 1, 5, 5)
    for layer in (RoIAlign(2, 1.0, 2), RoIPool(2, 1.0)):
        with pytest.raises(ValueError, match=r"K, 5"):
            layer(x, torch.zeros(1, 4))
        with pytest.raises(ValueError, match=r"boxes\[1\]"):
            layer(x, [torch.zeros(1, 4), torch.zeros(1, 5)])
        with pytest.raises(TypeError, match="list of Tensor"):
            layer(x, "boxes")
        with pytest.raises(ValueError, match=r"input must be a Tensor\[N, C, H, W\]"):
            layer(torch.zeros(1, 5, 5), torch.zeros(1, 5))


def test_functions_are_the_package_ops():
    x, rois, _, _ = case(2)
    assert torch.equal(roi_align(x, rois, 3, 0.5, 2), roi_ops.roi_align(x, rois, 3, 0.5, 2))
    assert torch.equal(roi_pool(x, rois, 3, 0.5), roi_ops.roi_pool(x, rois, 3, 0.5))
    b, s = rois[:, 1:], torch.linspace(1, 0, len(rois), dtype=torch.float64)
    assert torch.equal(box_iou(b, b), boxes.box_iou(b, b))
    assert torch.equal(nms(b, s, 0.3), boxes.nms(b, s, 0.3))
    assert torch.equal(batched_nms(b, s, rois[:, 0].long(), 0.3), boxes.batched_nms(b, s, rois[:, 0].long(), 0.3))
    assert roi_align.__name__ == "roi_align" and roi_align.__doc__ == roi_ops.roi_align.__doc__


class UsesTheOps(nn.Module):
    """A small detector-like head: both modules, the functions imported by name and through the module."""

    def __init__(self):
        super().__init__()
        self.align = RoIAlign(3, 0.5, 2)
        self.pool = RoIPool((2, 3), 0.5)
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x, rois, scores):
        x = self.conv(x)
        pooled = self.align(x, rois).flatten(1).sum(1) + self.pool(x, rois).flatten(1).sum(1)
        pooled = pooled + roi_align(x, rois, 2, 0.5, aligned=True).flatten(1).mean(1)
        keep = ops.nms(rois[:, 1:], scores + pooled.tanh() * 0.01, 0.4)
        iou = box_iou(rois[:, 1:], rois[:, 1:])
        return pooled[keep], iou, batched_nms(rois[:, 1:], scores, rois[:, 0].long(), 0.4)


def test_fx_trace_keeps_the_ops_as_leaves_and_gives_the_same_output():
    x, rois, _, _ = case(3)
    x, rois = x.float(), rois.float()
    scores = torch.linspace(1, 0.1, len(rois))
    model = UsesTheOps()
    traced = torch.fx.symbolic_trace(model)
    calls = [n.target for n in traced.graph.nodes if n.op == "call_function"]
    for op in (roi_align, roi_pool, nms, box_iou, batched_nms):
        assert op in calls, op.__name__
    assert calls.count(roi_align) == 2  # the module's call and the direct one, each one node
    assert "minimaskrcnn_ops_roi_align(conv, rois, 3, 0.5, 2, False)" in traced.code  # one call, settings as given
    for ours, theirs in zip(traced(x, rois, scores), model(x, rois, scores)):
        assert torch.equal(ours, theirs)


def test_the_unwrapped_op_cannot_be_traced_through():
    """What the leaves avoid: tracing into roi_align's body fails (it checks and sizes its inputs in Python)."""
    class Inner(nn.Module):
        def forward(self, x, rois):
            return roi_ops.roi_align(x, rois, 2)

    with pytest.raises((ValueError, TypeError, torch.fx.proxy.TraceError)):
        torch.fx.symbolic_trace(Inner())


def test_fx_tracer_can_keep_the_modules_as_call_module_leaves():
    class ModuleLeaves(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, (RoIAlign, RoIPool)) or super().is_leaf_module(m, qualname)

    model = UsesTheOps()
    graph_module = torch.fx.GraphModule(model, ModuleLeaves().trace(model))
    modules = {n.target for n in graph_module.graph.nodes if n.op == "call_module"}
    assert {"align", "pool"} <= modules
    x, rois, _, _ = case(4)
    x, rois = x.float(), rois.float()
    scores = torch.linspace(1, 0.1, len(rois))
    for ours, theirs in zip(graph_module(x, rois, scores), model(x, rois, scores)):
        assert torch.equal(ours, theirs)
