"""Backbone: a ResNet that turns an image into feature maps, and a Feature Pyramid Network (FPN) on top.

Built in notebooks/04_backbone_fpn.ipynb.

Shape glossary
    N        images in the batch
    H, W     height and width of the (padded) input batch
    C_l      channels of ResNet stage l (C2..C5); F the FPN's channels (256 in the reference)
    H_l, W_l height and width of level l: about H / 2**l, W / 2**l (stride 4 for p2 ... 64 for "pool")

Module names follow torchvision's `maskrcnn_resnet50_fpn` one to one (body.layer1.0.conv1, fpn.inner_blocks.0.0,
...), so `minimaskrcnn.weights` can load its published weights with a short name table.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEVEL_NAMES = ("p2", "p3", "p4", "p5", "pool")  # FPN outputs, finest first
NORMS = ("frozen_bn", "bn", "gn")
STAGES_PER_DEPTH = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (all buffers: nothing trains, nothing updates).

    y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, the same as nn.BatchNorm2d in eval mode,
    folded into one scale and shift. Pretrained detectors use it because their batches (1-2 images per GPU)
    are far too small for batch statistics.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # a BatchNorm2d's counter: meaningless here
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()  # (C,)
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]  # (C,) -> (1, C, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(norm: str, channels: int) -> nn.Module:
    """The normalisation layer named by norm: "frozen_bn", "bn" or "gn" (GroupNorm, groups of >= 8 channels)."""
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "gn":
        return nn.GroupNorm(max(1, min(32, channels // 8)), channels)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """ResNet-18/34 block: two 3x3 convs (the first may stride) plus the input (projected when shapes differ)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, norm: str):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(in_channels, width, stride), make_norm(norm, width)
        self.conv2, self.bn2 = conv3x3(width, width), make_norm(norm, width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, width * self.expansion, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet-50/101 block: 1x1 reduce, 3x3 (carries the stride, "ResNet v1.5"), 1x1 expand x4, plus the input."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, norm: str):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1, self.bn1 = conv1x1(in_channels, width), make_norm(norm, width)
        self.conv2, self.bn2 = conv3x3(width, width, stride), make_norm(norm, width)
        self.conv3, self.bn3 = conv1x1(width, out_channels), make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, out_channels, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _projection(in_channels: int, out_channels: int, stride: int, norm: str) -> nn.Sequential | None:
    """1x1 conv + norm on the shortcut when a block changes resolution or width; None (identity) otherwise."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), make_norm(norm, out_channels))


class ResNet(nn.Module):
    """ResNet body without the classifier: stem (7x7/2 conv, norm, ReLU, 3x3/2 max-pool) and four stages.

    forward(x: Tensor[N, 3, H, W]) -> OrderedDict {"c2": Tensor[N, C_2, H/4, W/4], ..., "c5": [N, C_5, H/32, W/32]}.
    trainable_layers (0..5) counts from the top which of layer4, layer3, layer2, layer1, stem train; the others
    get requires_grad=False (as torchvision; with norm="bn" their running statistics still update in train mode).
    """

    def __init__(self, depth: int = 50, norm: str = "frozen_bn", trainable_layers: int = 3, base_width: int = 64):
        super().__init__()
        if depth not in STAGES_PER_DEPTH:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGES_PER_DEPTH)}, got {depth}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not 0 <= trainable_layers <= 5:
            raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
        if base_width < 1:
            raise ValueError(f"base_width must be >= 1, got {base_width}")
        block = Bottleneck if depth >= 50 else BasicBlock
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(norm, base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels, self.stage_channels = base_width, []
        for i, num_blocks in enumerate(STAGES_PER_DEPTH[depth]):
            width, stride = base_width * 2**i, 1 if i == 0 else 2
            blocks = []
            for b in range(num_blocks):
                blocks.append(block(in_channels, width, stride if b == 0 else 1, norm))
                in_channels = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.stage_channels.append(in_channels)
        self._init_weights()
        self.freeze(trainable_layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def freeze(self, trainable_layers: int) -> None:
        """Let only the top `trainable_layers` of (layer4, layer3, layer2, layer1, stem) train."""
        trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
        if trainable_layers == 5:
            trainable.append("bn1")
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(name.split(".")[0] in trainable)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 3, H, W) -> (N, base, H/4, W/4)
        stages = OrderedDict()
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            stages[f"c{i + 2}"] = x
        return stages


class FPN(nn.Module):
    """Feature Pyramid Network: every stage mapped to F channels and enriched with the coarser levels above it.

    inner_blocks[i]: 1x1 "lateral" conv C_{i+2} -> F; layer_blocks[i]: 3x3 output conv F -> F. Top-down:
    merged_5 = lateral_5; merged_l = lateral_l + nearest-upsample(merged_{l+1}) to lateral_l's size;
    p_l = layer_block(merged_l). An extra level "pool" = max_pool2d(p5, kernel 1, stride 2) (a subsampling).
    Each conv sits in a one-element Sequential so parameter names match torchvision's (inner_blocks.0.0.weight).
    """

    def __init__(self, in_channels_list: list[int], out_channels: int):
        super().__init__()
        self.inner_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, out_channels, 1)) for c in in_channels_list
        )
        self.layer_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1)) for _ in in_channels_list
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, stages: list[Tensor]) -> list[Tensor]:
        """stages: [Tensor[N, C_l, H_l, W_l]] finest first -> [Tensor[N, F, H_l, W_l]] same sizes, plus "pool"."""
        if len(stages) != len(self.inner_blocks):
            raise ValueError(f"FPN built for {len(self.inner_blocks)} stages, got {len(stages)}")
        merged = self.inner_blocks[-1](stages[-1])
        outputs = [self.layer_blocks[-1](merged)]
        for i in range(len(stages) - 2, -1, -1):
            lateral = self.inner_blocks[i](stages[i])
            top_down = F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            merged = lateral + top_down
            outputs.insert(0, self.layer_blocks[i](merged))
        outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2, padding=0))
        return outputs


class BackboneWithFPN(nn.Module):
    """ResNet body + FPN. forward(x: Tensor[N, 3, H, W]) -> OrderedDict {"p2", "p3", "p4", "p5", "pool"}
    of Tensor[N, out_channels, H_l, W_l] with strides 4, 8, 16, 32, 64."""

    def __init__(self, body: ResNet, fpn_channels: int):
        super().__init__()
        self.body = body
        self.fpn = FPN(body.stage_channels, fpn_channels)
        self.out_channels = fpn_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"backbone input must be Tensor[N, 3, H, W], got shape {tuple(x.shape)}")
        levels = self.fpn(list(self.body(x).values()))
        return OrderedDict(zip(LEVEL_NAMES, levels))


def build_backbone(depth: int = 50, norm: str = "frozen_bn", trainable_layers: int = 3, fpn_channels: int = 256,
                   base_width: int = 64) -> BackboneWithFPN:
    """ResNet-{depth} + FPN. The defaults are torchvision's maskrcnn_resnet50_fpn backbone (stem + layer1 frozen).

    Built in notebooks/04_backbone_fpn.ipynb.
    """
    if fpn_channels < 1:
        raise ValueError(f"fpn_channels must be >= 1, got {fpn_channels}")
    return BackboneWithFPN(ResNet(depth, norm, trainable_layers, base_width), fpn_channels)


def receptive_fields(body: ResNet) -> "OrderedDict[str, tuple[int, int]]":
    """Stride and theoretical receptive field (pixels) of each stage of a ResNet body: {"c2": (4, rf), ...}.

    Walks the main path layer by layer: each k x k layer widens the field by (k - 1) x the current stride (jump),
    then multiplies the jump by its own stride. The shortcut projections never widen it. Built in notebooks/04.
    """
    field, jump = 1, 1

    def grow(kernel: int, stride: int):
        nonlocal field, jump
        field, jump = field + (kernel - 1) * jump, jump * stride

    grow(body.conv1.kernel_size[0], body.conv1.stride[0])
    grow(body.maxpool.kernel_size, body.maxpool.stride)
    out = OrderedDict()
    for i in range(4):
        for block in getattr(body, f"layer{i + 1}"):
            for name in ("conv1", "conv2", "conv3"):
                conv = getattr(block, name, None)
                if conv is not None:
                    grow(conv.kernel_size[0], conv.stride[0])
        out[f"c{i + 2}"] = (jump, field)
    return out
