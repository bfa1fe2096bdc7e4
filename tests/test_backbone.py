"""Backbone: FrozenBatchNorm2d, ResNet stages, FPN levels, freezing, reference shapes (minimaskrcnn/backbone.py)."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from minimaskrcnn.anchors import AnchorGenerator
from minimaskrcnn.backbone import FPN, LEVEL_NAMES, FrozenBatchNorm2d, ResNet, build_backbone
from minimaskrcnn.rpn import RPNHead

FIXTURE = Path(__file__).parent / "fixtures" / "torchvision_maskrcnn_resnet50_fpn_state_dict_shapes.json"


def test_frozen_bn_equals_batchnorm_in_eval():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.1, 3)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    frozen = FrozenBatchNorm2d(5)
    frozen.load_state_dict(bn.state_dict())  # its num_batches_tracked is dropped on load
    x = torch.randn(2, 5, 7, 6)
    torch.testing.assert_close(frozen(x), bn.eval()(x), atol=1e-6, rtol=1e-6)
    assert frozen.eps == bn.eps == 1e-5
    assert list(frozen.parameters()) == []  # nothing for an optimiser to touch


def test_frozen_bn_is_the_same_in_train_mode():
    frozen = FrozenBatchNorm2d(3)
    frozen.running_mean.fill_(0.5)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(frozen.train()(x), frozen.eval()(x))
    torch.testing.assert_close(frozen.running_mean, torch.full((3,), 0.5))


@pytest.mark.parametrize("depth, channels", [(18, [16, 32, 64, 128]), (34, [16, 32, 64, 128]),
                                             (50, [64, 128, 256, 512]), (101, [64, 128, 256, 512])])
def test_resnet_stage_shapes(depth, channels):
    body = ResNet(depth, norm="bn", trainable_layers=5, base_width=16).eval()
    stages = body(torch.zeros(1, 3, 64, 96))
    assert list(stages) == ["c2", "c3", "c4", "c5"]
    assert body.stage_channels == channels
    for (name, x), c, stride in zip(stages.items(), channels, (4, 8, 16, 32)):
        assert tuple(x.shape) == (1, c, 64 // stride, 96 // stride), name


@pytest.mark.parametrize("batch_shape", [(1, 64, 64), (2, 96, 128), (3, 128, 64), (2, 100, 70)])
@pytest.mark.parametrize("norm", ["frozen_bn", "bn", "gn"])
def test_fpn_levels_shapes(batch_shape, norm):
    n, h, w = batch_shape
    backbone = build_backbone(18, norm, trainable_layers=5, fpn_channels=24, base_width=16)
    assert backbone.out_channels == 24
    features = backbone(torch.randn(n, 3, h, w))
    assert tuple(features) == LEVEL_NAMES
    size = (h, w)
    for name in LEVEL_NAMES[:4]:  # each stride-2 step rounds up: conv (k 3 or 7, pad) and max-pool
        size = tuple((s + 1) // 2 for s in size) if name != "p2" else tuple(((s + 1) // 2 + 1) // 2 for s in size)
        assert tuple(features[name].shape) == (n, 24, *size), name
    pool = features["pool"]
    assert tuple(pool.shape) == (n, 24, (size[0] + 1) // 2, (size[1] + 1) // 2)
    torch.testing.assert_close(pool, features["p5"][:, :, ::2, ::2])  # max-pool of kernel 1 = subsampling


def test_fpn_top_down_reaches_fine_levels():
    """Changing only the coarsest stage changes p2: information flows down through the top-down path."""
    torch.manual_seed(0)
    fpn = FPN([4, 8, 16, 32], 8)
    stages = [torch.randn(1, c, s, s) for c, s in zip([4, 8, 16, 32], [16, 8, 4, 2])]
    before = fpn(stages)
    stages[3] = stages[3] + 1.0
    after = fpn(stages)
    assert all(not torch.allclose(b, a) for b, a in zip(before, after))


def test_fpn_upsamples_to_the_lateral_size_for_odd_sizes():
    fpn = FPN([4, 8], 8)
    out = fpn([torch.randn(1, 4, 7, 5), torch.randn(1, 8, 4, 3)])
    assert [tuple(o.shape[-2:]) for o in out] == [(7, 5), (4, 3), (2, 2)]


@pytest.mark.parametrize("trainable_layers, frozen_prefixes", [
    (0, ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")),
    (3, ("conv1", "bn1", "layer1")),
    (5, ()),
])
def test_trainable_layers(trainable_layers, frozen_prefixes):
    backbone = build_backbone(18, "gn", trainable_layers, fpn_channels=8, base_width=8)
    for name, p in backbone.body.named_parameters():
        assert p.requires_grad == (name.split(".")[0] not in frozen_prefixes), name
    assert all(p.requires_grad for p in backbone.fpn.parameters())


def test_frozen_stages_get_no_gradient():
    backbone = build_backbone(18, "frozen_bn", trainable_layers=2, fpn_channels=8, base_width=8)
    sum(f.sum() for f in backbone(torch.randn(1, 3, 64, 64)).values()).backward()
    assert backbone.body.layer2[0].conv1.weight.grad is None
    assert backbone.body.layer3[0].conv1.weight.grad is not None


@pytest.mark.parametrize("kwargs, message", [
    (dict(depth=20), "depth"), (dict(norm="ln"), "norm"), (dict(trainable_layers=6), "trainable_layers"),
    (dict(fpn_channels=0), "fpn_channels"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(**{"depth": 18, **kwargs})


def test_bad_input_shape():
    with pytest.raises(ValueError, match="Tensor\\[N, 3, H, W\\]"):
        build_backbone(18, "gn", 5, 8, base_width=8)(torch.zeros(3, 32, 32))


def test_r50_fpn_and_rpn_shapes_match_torchvision_reference():
    """Every backbone / FPN / RPN tensor of torchvision's maskrcnn_resnet50_fpn, same name, same shape.

    Our names equal torchvision's (so the map is the identity, one to one); torchvision's BatchNorm2d counters
    (num_batches_tracked) have no counterpart in FrozenBatchNorm2d.
    """
    reference = json.loads(FIXTURE.read_text())["keys"]
    theirs = {k: tuple(v) for k, v in reference.items()
              if k.startswith(("backbone.", "rpn.")) and not k.endswith("num_batches_tracked")}
    backbone = build_backbone(50, "frozen_bn", trainable_layers=3, fpn_channels=256)
    head = RPNHead(backbone.out_channels, AnchorGenerator(((32,),) * 5, ((0.5, 1.0, 2.0),) * 5).num_anchors_per_location()[0])
    ours = {f"backbone.{k}": tuple(v.shape) for k, v in backbone.state_dict().items()}
    ours.update({f"rpn.head.{k}": tuple(v.shape) for k, v in head.state_dict().items()})
    assert sorted(set(ours) - set(theirs)) == []
    assert sorted(set(theirs) - set(ours)) == []
    assert ours == theirs
    counters = [k for k in reference if k.startswith("backbone.") and k.endswith("num_batches_tracked")]
    assert len(counters) == sum(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules()) == 53
