"""Weights: torchvision's Mask R-CNN state dicts in our names, and its published COCO / ImageNet weights.

Built in notebooks/10_full_model.ipynb.

`build_model("r50_fpn", 91)` has the same layers as torchvision's `maskrcnn_resnet50_fpn`, under the same names: our
modules took torchvision's attribute names on purpose (conv1, layer3.2.bn1, fpn.inner_blocks.0.0, rpn.head.conv.0.0,
...). Converting a state dict therefore renames nothing; it checks every key against `KEY_PATTERNS` (the layout of
a Mask R-CNN state dict: what each parameter is and where it lives) and drops or adds torchvision's batch counters;
the tests check that the patterns cover both state dicts exactly:

    from_torchvision(their_state_dict) -> our state dict   (loads into build_model("r50_fpn", 91), strict)
    to_torchvision(our_state_dict)     -> their state dict (loads into torchvision's model, strict)

`load_pretrained(name)` downloads torchvision's published files (HTTPS, urllib), checks the SHA-256 prefix that
their file names carry (`<name>-<first 8 hex digits of sha256>.pth`, torch.hub's convention), caches them and
reads them with `torch.load(weights_only=True)`, which never unpickles arbitrary objects.

`load_initial_weights(model, "coco" | "imagenet" | path)` starts a training run from them (`train --weights`):
the whole detector strictly, except the box and mask predictors, which keep their fresh initialisation when the
weights were trained for another number of classes (torchvision's fine-tuning recipe); or the ImageNet ResNet-50
onto the backbone's body only. Weights that do not fit the model (another preset) are refused, naming the keys.

Shape glossary
    K      object classes (91 COCO indices, 0 = background, some "N/A")
    A      anchors per location (3)
"""
import hashlib
import os
import pickle
import re
import tempfile
import urllib.request
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from minimaskrcnn.checkpoints import unpickling_refusal

# ---------------------------------------------------------------------------------------------------------------
# The layout of a Mask R-CNN state dict, in both libraries' names. {s} {b} {i} are integers, {p} a parameter / buffer
# name (weight, bias, running_mean, ...). torchvision's BatchNorm2d also counts the batches it has seen
# (num_batches_tracked); our FrozenBatchNorm2d never updates, so it has no such counter.
# ---------------------------------------------------------------------------------------------------------------
KEY_PATTERNS: list[str] = [
    # ResNet-50 stem
    "backbone.body.conv1.weight",
    "backbone.body.bn1.{p}",
    # bottleneck blocks: layer{s} (s = 1..4) block {b}
    "backbone.body.layer{s}.{b}.conv{i}.weight",
    "backbone.body.layer{s}.{b}.bn{i}.{p}",
    "backbone.body.layer{s}.{b}.downsample.0.weight",
    "backbone.body.layer{s}.{b}.downsample.1.{p}",
    # FPN: 1x1 lateral convs and 3x3 output convs, level i = 0..3 (C2..C5 -> P2..P5)
    "backbone.fpn.inner_blocks.{i}.0.{p}",
    "backbone.fpn.layer_blocks.{i}.0.{p}",
    # RPN head: shared 3x3 conv, objectness logits (A), box deltas (4A)
    "rpn.head.conv.0.0.{p}",
    "rpn.head.cls_logits.{p}",
    "rpn.head.bbox_pred.{p}",
    # box head: two FC 1024 (TwoMLPHead), predictor (K+1 scores, (K+1)*4 deltas)
    "roi_heads.box_head.fc6.{p}",
    "roi_heads.box_head.fc7.{p}",
    "roi_heads.box_predictor.cls_score.{p}",
    "roi_heads.box_predictor.bbox_pred.{p}",
    # mask head: four 3x3 convs (i = 0..3), 2x2 transposed conv, 1x1 to K+1 mask logits
    "roi_heads.mask_head.{i}.0.{p}",
    "roi_heads.mask_predictor.conv5_mask.{p}",
    "roi_heads.mask_predictor.mask_fcn_logits.{p}",
]
BATCH_COUNTER = "num_batches_tracked"


def _regex(pattern: str) -> re.Pattern:
    """'a.{s}.b' -> a regex of the whole key: {p} any name, the other placeholders integers."""
    parts = re.split(r"\{(\w)\}", pattern)  # literal, placeholder, literal, placeholder, ..., literal
    return re.compile("".join(re.escape(part) if k % 2 == 0 else (r"\w+" if part == "p" else r"\d+")
                              for k, part in enumerate(parts)) + r"\Z")


_KEYS = [_regex(pattern) for pattern in KEY_PATTERNS]


def check_key(name: str, whose: str) -> None:
    """KeyError naming `name` (a key of `whose` state dict) unless it is a key of the Mask R-CNN layout."""
    if not any(regex.match(name) for regex in _KEYS):
        raise KeyError(f"{whose} key {name!r} is not part of a Mask R-CNN state dict "
                       "(minimaskrcnn.weights.KEY_PATTERNS)")


def from_torchvision(state_dict: dict[str, Tensor]) -> "OrderedDict[str, Tensor]":
    """torchvision maskrcnn_resnet50_fpn state dict -> ours, for build_model("r50_fpn", 91).load_state_dict.

    Works for both of torchvision's flavours: the published weights (FrozenBatchNorm2d, no batch counters) and
    a freshly built `maskrcnn_resnet50_fpn(weights=None)` (BatchNorm2d with num_batches_tracked, dropped here).
    The names are the same; a key outside the layout is a KeyError naming it. Tensors are shared, not copied.
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"from_torchvision expects a state dict (dict of tensors), got {type(state_dict).__name__}")
    out = OrderedDict()
    for name, value in state_dict.items():
        if not name.endswith("." + BATCH_COUNTER):
            check_key(name, "torchvision")
            out[name] = value
    return out


def to_torchvision(state_dict: dict[str, Tensor], num_batches_tracked: bool = False) -> "OrderedDict[str, Tensor]":
    """Our state dict -> torchvision's (the reverse of from_torchvision; a key outside the layout is a KeyError).

    num_batches_tracked=True adds a zero batch counter after every norm layer's running_var, as a
    torchvision model built with weights=None (plain BatchNorm2d) has; torchvision's published files have none.
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"to_torchvision expects a state dict (dict of tensors), got {type(state_dict).__name__}")
    out = OrderedDict()
    for name, value in state_dict.items():
        check_key(name, "minimaskrcnn")
        out[name] = value
        if num_batches_tracked and name.endswith(".running_var"):
            out[name[: -len("running_var")] + BATCH_COUNTER] = torch.tensor(0, dtype=torch.long)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Published weights
# ---------------------------------------------------------------------------------------------------------------
PRETRAINED_URLS = {
    # torchvision's MaskRCNN_ResNet50_FPN_Weights.COCO_V1 (box AP 37.9, mask AP 34.6 on COCO val2017)
    "maskrcnn_resnet50_fpn_coco": "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
    # torchvision's ResNet50_Weights.IMAGENET1K_V1, the backbone initialisation the COCO model was trained from
    "resnet50_imagenet": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")


def default_cache_dir() -> Path:
    """torch.hub's checkpoint folder ($TORCH_HOME/hub/checkpoints), shared with torchvision's downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def expected_hash_prefix(file_name: str) -> str:
    """'maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth' -> 'bf2d0c1e'; ValueError if the name carries no hash."""
    match = _HASH_IN_NAME.search(file_name)
    if match is None:
        raise ValueError(f"{file_name!r} carries no SHA-256 prefix (expected '<name>-<hex digits>.pth')")
    return match.group(1)


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(path: str | os.PathLike) -> Path:
    """Refuse a file whose SHA-256 does not start with the prefix in its name (truncated, tampered, wrong file)."""
    path = Path(path)
    expected, actual = expected_hash_prefix(path.name), sha256_of(path)
    if not actual.startswith(expected):
        raise ValueError(
            f"{path}: SHA-256 {actual} does not start with {expected} as its name says: the file is truncated, "
            f"corrupted or not the published one. Delete it and download it again."
        )
    return path


def load_checked(path: str | os.PathLike) -> dict[str, Tensor]:
    """check_file(path), then torch.load(weights_only=True) on the CPU -> the state dict it holds."""
    path = check_file(path)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged zip/pickle raises one of several types; say which file and why
        raise ValueError(f"{path}: not a readable weights file ({type(error).__name__}: {error})") from error
    if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise ValueError(f"{path}: holds a {type(state_dict).__name__}, not a state dict of tensors")
    return state_dict


def cached_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where load_pretrained(name) keeps its file (it may not be there yet)."""
    if name not in PRETRAINED_URLS:
        raise ValueError(f"unknown pretrained weights {name!r}; choose one of {sorted(PRETRAINED_URLS)}")
    url = PRETRAINED_URLS[name]
    return Path(cache_dir or default_cache_dir()) / url.rsplit("/", 1)[-1]


def download(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download url into cache_dir (unless already there) and check its SHA-256 prefix -> the file's path.

    The download goes to a temporary file renamed into place only once its hash is right, so an interrupted
    download never leaves a file that looks complete.
    """
    cache_dir = Path(cache_dir or default_cache_dir())
    target = cache_dir / url.rsplit("/", 1)[-1]
    expected = expected_hash_prefix(target.name)
    if target.exists():
        return check_file(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, suffix=".partial")
    print(f"downloading {url} -> {target}")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if not digest.hexdigest().startswith(expected):
            raise ValueError(f"{url}: downloaded SHA-256 {digest.hexdigest()} does not start with {expected}")
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return target


def load_pretrained(name: str, cache_dir: str | os.PathLike | None = None) -> "OrderedDict[str, Tensor]":
    """Torchvision's published weights, downloaded once, checked, in our names.

    name: "maskrcnn_resnet50_fpn_coco" -> a state dict for build_model("r50_fpn", 91) (see coco_model());
          "resnet50_imagenet"          -> a state dict for the r50_fpn model's backbone.body (fc layer dropped).
    """
    cached_path(name)  # validates the name
    state_dict = load_checked(download(PRETRAINED_URLS[name], cache_dir))
    if name == "resnet50_imagenet":
        return resnet_from_torchvision(state_dict)
    return from_torchvision(state_dict)


def resnet_from_torchvision(state_dict: dict[str, Tensor]) -> "OrderedDict[str, Tensor]":
    """torchvision ResNet state dict (conv1.weight, layer1.0.bn1.running_mean, ..., fc.weight) -> our names inside
    `model.backbone.body`, checked against the same KEY_PATTERNS as the detector's backbone (the ImageNet classifier
    `fc` and the batch counters are dropped). KeyError for a key that is not part of a ResNet.
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"resnet_from_torchvision expects a state dict, got {type(state_dict).__name__}")
    prefix = "backbone.body."
    body = {prefix + k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    return OrderedDict((k[len(prefix):], v) for k, v in from_torchvision(body).items())


# ---------------------------------------------------------------------------------------------------------------
# Starting a training run from weights (train --weights coco|imagenet|PATH)
# ---------------------------------------------------------------------------------------------------------------
PREDICTOR_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.")  # the layers that know K


def _check_fit(expected: dict[str, Tensor], given: dict[str, Tensor], source: str, where: str) -> None:
    """ValueError naming the keys `given` lacks, has in excess, or has with another shape than `expected`.

    Batch counters (num_batches_tracked of a trainable BatchNorm2d) may be absent: they start at 0.
    """
    missing = [k for k in expected if k not in given and not k.endswith("." + BATCH_COUNTER)]
    unexpected = [k for k in given if k not in expected]
    reshaped = [f"{k} {tuple(given[k].shape)} in the weights, {tuple(expected[k].shape)} in the model"
                for k in given if k in expected and given[k].shape != expected[k].shape]
    if not (missing or unexpected or reshaped):
        return
    problems = [f"{len(found)} {what} (e.g. {', '.join(found[:3])})"
                for found, what in ((reshaped, "of another shape"), (missing, "missing from the weights"),
                                    (unexpected, "not in the model")) if found]
    hint = ""
    if any(k.endswith(".running_var") for k in unexpected):
        hint = "; weights with batch-norm statistics need backbone_norm 'frozen_bn' or 'bn'"
    raise ValueError(f"{source} does not fit {where}: {'; '.join(problems)}{hint}")


def load_detector_weights(model: nn.Module, state_dict: dict[str, Tensor], source: str) -> list[str]:
    """Load a whole-detector state dict (our names) into `model` -> the keys left re-initialised.

    Strict, except the box and mask predictors: when the weights were trained for another number of classes
    (their cls_score has 91 rows for COCO) these keep the model's fresh initialisation, as torchvision's
    fine-tuning tutorial replaces them. Everything else must match key for key and shape for shape; ValueError
    otherwise (e.g. COCO weights into the tiny preset), naming `source` and the first offending keys.
    Built in notebooks/11_train_on_gpu.ipynb.
    """
    scores = state_dict.get("roi_heads.box_predictor.cls_score.weight")
    reinit = scores is not None and scores.shape[0] != model.num_classes
    expected = model.state_dict()
    if reinit:
        expected = {k: v for k, v in expected.items() if not k.startswith(PREDICTOR_PREFIXES)}
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(PREDICTOR_PREFIXES)}
    _check_fit(expected, state_dict, source, f"this model ({model.num_classes} classes with the background)")
    model.load_state_dict(state_dict, strict=False)  # _check_fit made sure only the dropped keys are absent
    return [k for k in model.state_dict() if reinit and k.startswith(PREDICTOR_PREFIXES)]


def load_backbone_weights(model: nn.Module, body_state_dict: dict[str, Tensor], source: str) -> None:
    """Load a ResNet state dict in our names (resnet_from_torchvision) into `model.backbone.body`, strictly.

    The FPN and the heads keep their fresh initialisation. ValueError naming the offending keys when the body
    differs (another depth or width; GroupNorm has no batch-norm statistics to take).
    Built in notebooks/11_train_on_gpu.ipynb.
    """
    _check_fit(model.backbone.body.state_dict(), body_state_dict, source, "this model's backbone.body")
    model.backbone.body.load_state_dict(body_state_dict, strict=False)  # only batch counters may be absent


def read_weights_file(path: str | os.PathLike) -> tuple[str, "OrderedDict[str, Tensor]"]:
    """A local weights file -> ("detector" | "backbone", state dict in our names), read with weights_only=True.

    Accepts a minimaskrcnn checkpoint (its "model" entry), a state dict of ours or of torchvision's
    maskrcnn_resnet50_fpn (keys backbone.body..., rpn..., roi_heads...), or of a torchvision ResNet (conv1.weight,
    layer1..., fc...). ValueError naming the file for anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # a pickle of objects that could run code, or not a pickle at all
        raise ValueError(unpickling_refusal(path, error)) from None
    except Exception as error:  # a damaged file: say which file and why
        raise ValueError(f"{path}: not a readable weights file ({type(error).__name__}: {error})") from error
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded = loaded["model"]  # a minimaskrcnn checkpoint: {"model": state dict, "optimizer": ..., ...}
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f"{path}: holds a {type(loaded).__name__}, not a state dict of tensors")
    try:
        if any(k.startswith("backbone.body.") for k in loaded):
            return "detector", from_torchvision(loaded)
        if "conv1.weight" in loaded:
            return "backbone", resnet_from_torchvision(loaded)
    except KeyError as error:
        raise ValueError(f"{path}: {error.args[0]}") from None
    raise ValueError(f"{path}: neither a Mask R-CNN state dict (backbone.body.*, rpn.*, roi_heads.*) nor a ResNet "
                     f"one (conv1.weight, layer1.*); its first keys are {list(loaded)[:3]}")


def load_initial_weights(model: nn.Module, weights: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Start `model` from `weights` (train --weights) -> a one-line account of what was loaded.

    weights: "coco"     -> torchvision's COCO Mask R-CNN (downloaded once, hash-checked, converted): the whole
                           model; the predictors re-initialised unless the model has 91 classes too;
             "imagenet" -> torchvision's ImageNet ResNet-50 onto backbone.body (FPN and heads as built);
             a path     -> a local file, see read_weights_file.
    The frozen norms keep eps 1e-5 (torchvision runs its COCO model with eps 0; the difference is a rounding-sized
    rescale that fine-tuning absorbs, and a checkpoint then rebuilds the very model that was trained).
    Built in notebooks/11_train_on_gpu.ipynb.
    """
    if weights == "coco":
        source, kind = cached_path("maskrcnn_resnet50_fpn_coco", cache_dir), "detector"
        state_dict = load_pretrained("maskrcnn_resnet50_fpn_coco", cache_dir)
    elif weights == "imagenet":
        source, kind = cached_path("resnet50_imagenet", cache_dir), "backbone"
        state_dict = load_pretrained("resnet50_imagenet", cache_dir)
    else:
        source = Path(weights)
        kind, state_dict = read_weights_file(source)
    if kind == "backbone":
        load_backbone_weights(model, state_dict, str(source))
        return f"backbone.body from {source} ({len(state_dict)} tensors); FPN and heads freshly initialised"
    reinit = load_detector_weights(model, state_dict, str(source))
    if not reinit:
        return f"the whole model from {source} ({len(state_dict)} tensors)"
    theirs = state_dict["roi_heads.box_predictor.cls_score.weight"].shape[0]
    return (f"the model from {source} ({len(state_dict) - len(reinit)} tensors); box and mask predictors "
            f"re-initialised for {model.num_classes} classes (the weights have {theirs})")


def set_frozen_bn_eps(model: nn.Module, eps: float) -> int:
    """Set eps of every FrozenBatchNorm2d in model -> how many were changed.

    torchvision's COCO weights were trained with eps = 0 in the frozen norms (it calls overwrite_eps(model, 0.0)
    after loading them); reproducing its outputs needs the same.
    """
    from minimaskrcnn.backbone import FrozenBatchNorm2d

    changed = 0
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.eps = eps
            changed += 1
    return changed


def coco_model(cache_dir: str | os.PathLike | None = None) -> nn.Module:
    """build_model("r50_fpn", 91) with torchvision's COCO weights (downloaded once), frozen-norm eps 0, eval mode."""
    from minimaskrcnn.model import build_model

    model = build_model("r50_fpn", 91)
    model.load_state_dict(load_pretrained("maskrcnn_resnet50_fpn_coco", cache_dir))
    set_frozen_bn_eps(model, 0.0)
    return model.eval()


def coco_category_names() -> list[str]:
    """The 91 class names of torchvision's COCO detectors: index = label; 0 = background, "N/A" = unused id."""
    return list(_COCO_NAMES)


_COCO_NAMES = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet",
    "N/A", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "N/A", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
