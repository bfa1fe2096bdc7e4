"""Counting host-device synchronisations: the operations that make Python wait for the GPU.

On a GPU, PyTorch queues each kernel and returns at once, so the host runs ahead of the device. The host has to wait
(a synchronisation) whenever it needs something only the device knows: a Python number (`.item()`, `bool(t)`,
`if t.any():`), a shape that depends on the values (`nonzero`, `x[mask]`, `unique`), or a copy between host and
device memory. Each wait drains the queue and leaves the GPU idle until the host has queued new work; a training step
with hundreds of them is bound by the host. Which operations wait does not depend on the device, so they can be
counted on a CPU: `SyncCounter` watches every torch call and tallies the waiting ones by kind and by model stage.

Only calls on tensors that would live on the GPU count. On a CPU every tensor is on the CPU, so SyncCounter follows
which ones would stay on the host in a GPU run: those made by a factory (torch.tensor, zeros, arange, ...) without a
`device` argument, `.cpu()` results, and whatever is computed from those alone; `.to(device)` moves one back. Model
inputs, parameters and tensors made with `device=...` (code writes `device=x.device` to follow its data) count.
Code that takes a CPU-only shortcut (nms, see minimaskrcnn.boxes) asks `counting_syncs()` and takes its GPU path while
a counter runs, so that the count is a GPU run's.

    with SyncCounter(maskrcnn_stages()) as counter:
        losses = model(images, targets)
        sum(losses.values()).backward()
    print(counter.table())          # or: print(train_step_syncs(model, images, targets).table())

Shape glossary: none; this module counts calls, it computes nothing on tensors.
"""
import inspect
import os
import sys
import weakref
from collections import Counter
from typing import Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# kind -> what it stands for. The first group is seen at the aten (dispatch) level, so it is counted wherever it is
# called from; the second at the Python (torch function) level, where `tolist` and `cpu` leave no trace on a CPU.
SYNC_KINDS = {
    "nonzero": "nonzero / torch.where(cond) / argwhere: the output length depends on the values",
    "mask index": "x[mask] with a boolean mask (aten.index)",
    "mask index_put": "x[mask] = v with a boolean mask, and the backward of x[mask] (aten.index_put)",
    "masked_select": "torch.masked_select",
    "equal": "torch.equal",
    "bincount": "torch.bincount (on CUDA it reads the maximum even with minlength)",
    "unique": "torch.unique / unique_consecutive",
    "repeat_interleave": "repeat_interleave with tensor repeats and no output_size",
    "scalar (internal)": "aten._local_scalar_dense called from inside another op",
    "torchvision nms": "torchvision's compiled nms (its CUDA kernel copies the overlap mask to the host)",
    "device copy": "a copy between CPU and another device (visible only when running on that device)",
    "item": "Tensor.item()",
    "to Python": "bool(t), int(t), float(t), operator.index(t): also `if t:`, `while t:`, max(t, 1), range(t)",
    "tolist": "Tensor.tolist()",
    "cpu": "Tensor.cpu() / Tensor.numpy()",
    "tensor(data)": "torch.tensor / as_tensor / asarray / new_tensor of Python data on a device: a blocking copy",
}

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_THIS_FILE = __file__
_BOOL_DTYPES = (torch.bool, torch.uint8)
_UNIQUE_OPS = {"_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive"}
_INDEX_PUT_OPS = {"index_put", "index_put_", "_index_put_impl_", "_unsafe_index_put"}
_FUNCTION_KINDS = {  # Python-level calls that wait on the device, whatever aten ops they run underneath
    torch.Tensor.item: "item",
    torch.Tensor.__bool__: "to Python",
    torch.Tensor.__int__: "to Python",
    torch.Tensor.__float__: "to Python",
    torch.Tensor.__index__: "to Python",
    torch.Tensor.tolist: "tolist",
    torch.Tensor.cpu: "cpu",
    torch.Tensor.numpy: "cpu",
}
_FROM_DATA = (torch.tensor, torch.as_tensor, torch.asarray)
_TO_HOST = (torch.Tensor.cpu, torch.Tensor.numpy)


_ACTIVE = [0]  # SyncCounters inside their `with` block


def counting_syncs() -> bool:
    """Whether a SyncCounter is counting. Code with a CPU-only shortcut that would sync on a GPU (nms's compacting
    path) takes its GPU path then, so that the count is that of a GPU run."""
    return _ACTIVE[0] > 0


def _dispatch_kind(func, args, kwargs) -> str | None:
    """The kind of an aten-level call that synchronises, or None."""
    namespace, name = func.namespace, func.overloadpacket.__name__
    if namespace == "torchvision":
        return "torchvision nms" if name == "nms" else None
    if namespace != "aten":
        return None
    if name in ("nonzero", "masked_select", "equal", "bincount"):
        return name
    if name in _UNIQUE_OPS:
        return "unique"
    if name == "index" or name in _INDEX_PUT_OPS:
        if any(i is not None and i.dtype in _BOOL_DTYPES for i in args[1]):
            return "mask index" if name == "index" else "mask index_put"
        return None
    if name == "repeat_interleave":
        tensor_repeats = func._overloadname in ("Tensor", "self_Tensor")
        return "repeat_interleave" if tensor_repeats and kwargs.get("output_size") is None else None
    if name == "_local_scalar_dense":
        return "scalar (internal)"
    if name in ("_to_copy", "copy_"):
        source = args[1] if name == "copy_" else args[0]
        target = args[0].device if name == "copy_" else kwargs.get("device") or source.device
        return "device copy" if (source.device.type == "cpu") != (torch.device(target).type == "cpu") else None
    return None


def _tensors(args, kwargs=None) -> list:
    """The tensors among args and kwargs' values, and inside lists or tuples there (as torch calls take them)."""
    found = []
    for arg in (*args, *(kwargs or {}).values()):
        if isinstance(arg, torch.Tensor):
            found.append(arg)
        elif isinstance(arg, (list, tuple)):
            found.extend(t for t in arg if isinstance(t, torch.Tensor))
    return found


def _code(fn: Callable):
    """The code object a stage's frames run: a function's, a method's, or an nn.Module class's forward."""
    if isinstance(fn, type):
        fn = fn.forward
    return inspect.unwrap(getattr(fn, "__func__", fn)).__code__


class SyncCounter:
    """Count the synchronising torch calls (SYNC_KINDS) made inside a `with` block, by stage and kind.

    stages: {function, method or nn.Module class: stage name}. A counted call belongs to the innermost of those
    functions on the Python call stack at that moment ("other" if none is). Autograd's backward runs inside
    torch.autograd.backward, so map that to a stage to see the backward pass's syncs apart.
    After the block: `counts` {(stage, kind): n}, `sites` {(stage, kind, "file:line"): n} (the innermost frame
    outside torch), `total()`, `by_stage()`, `table()`.
    """

    def __init__(self, stages: dict[Callable, str] | None = None):
        self.stage_of = {_code(fn): stage for fn, stage in (stages or {}).items()}
        self.stage_order = list(dict.fromkeys((stages or {}).values()))
        self.counts: Counter = Counter()
        self.sites: Counter = Counter()
        self._inside_counted = 0  # > 0 while a Python-level counted call runs (its aten ops are not counted again)
        self._host: dict[int, weakref.ref] = {}  # id -> tensor that would stay on the host in a GPU run
        self._modes = (_FunctionCounter(self), _DispatchCounter(self))

    def __enter__(self) -> "SyncCounter":
        for mode in self._modes:
            mode.__enter__()
        _ACTIVE[0] += 1
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE[0] -= 1
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def is_host(self, tensor) -> bool:
        ref = self._host.get(id(tensor))
        return ref is not None and ref() is tensor

    def all_host(self, tensors: list) -> bool:
        """Whether tensors (a non-empty list) would all stay on the host in a GPU run."""
        return bool(tensors) and all(self.is_host(t) for t in tensors)

    def mark_host(self, out) -> None:
        for tensor in _tensors((out,)):
            key = id(tensor)
            self._host[key] = weakref.ref(tensor, lambda ref, key=key: self._host.get(key) is ref and self._host.pop(key))

    def record(self, kind: str) -> None:
        stage, site = "other", None
        frame = sys._getframe(1)
        while frame is not None:
            filename = frame.f_code.co_filename
            if site is None and not filename.startswith(_TORCH_DIR) and filename != _THIS_FILE:
                site = f"{os.path.relpath(filename)}:{frame.f_lineno}"
            if frame.f_code in self.stage_of:
                stage = self.stage_of[frame.f_code]
                break
            frame = frame.f_back
        self.counts[stage, kind] += 1
        self.sites[stage, kind, site] += 1

    def total(self, stage: str | None = None) -> int:
        return sum(n for (s, _), n in self.counts.items() if stage is None or s == stage)

    def by_stage(self) -> dict[str, int]:
        """{stage: count} for every configured stage (0 when none), then "other" when it has counts."""
        counts = {stage: self.total(stage) for stage in self.stage_order}
        if self.total("other"):
            counts["other"] = self.total("other")
        return counts

    def table(self, title: str = "") -> str:
        """A text table: one row per stage, one column per kind that occurred, and the totals."""
        kinds = [k for k in SYNC_KINDS if any(kind == k for _, kind in self.counts)]
        stages = list(self.by_stage())
        width = max([len(s) for s in stages] + [len("total"), len(title)])
        cols = [max(len(k), 3) for k in kinds]
        lines = [f"{title:<{width}}  " + "  ".join(f"{k:>{c}}" for k, c in zip(kinds, cols)) + "  total"]
        for stage in stages + ["total"]:
            row = [sum(n for (s, kind), n in self.counts.items() if kind == k and stage in (s, "total")) for k in kinds]
            lines.append(f"{stage:<{width}}  " + "  ".join(f"{n or '.':>{c}}" for n, c in zip(row, cols))
                         + f"  {sum(row):>5}")
        return "\n".join(lines)


class _FunctionCounter(TorchFunctionMode):
    """Counts the Python-level kinds, and follows which tensors would stay on the host (see the module docstring)."""

    def __init__(self, counter: SyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        counter = self.counter
        tensors = _tensors(args, kwargs)
        on_host = counter.all_host(tensors)
        kind = _FUNCTION_KINDS.get(func)
        if func in _FROM_DATA or func is torch.Tensor.new_tensor:
            data = args[1] if func is torch.Tensor.new_tensor else (args[0] if args else None)
            to_device = kwargs.get("device") is not None or (func is torch.Tensor.new_tensor and not on_host)
            kind = "tensor(data)" if to_device and not isinstance(data, torch.Tensor) else None
        elif on_host:
            kind = None  # a host tensor's value is already on the host
        if kind is None:
            out = func(*args, **kwargs)
        else:
            counter.record(kind)
            counter._inside_counted += 1
            try:
                out = func(*args, **kwargs)
            finally:
                counter._inside_counted -= 1
        to_device = func is torch.Tensor.cuda or (func is torch.Tensor.to and (
            "device" in kwargs or any(isinstance(a, (str, torch.device, torch.Tensor)) for a in args[1:])))
        if (func in _TO_HOST or to_device) and any(out is t for t in tensors):
            out = out.view_as(out)  # a no-op move on the CPU: a new alias, to tag apart from its source
        if func in _TO_HOST or (not tensors and kwargs.get("device") is None):  # .cpu(), or made on the host
            counter.mark_host(out)
        elif to_device:
            counter._host.pop(id(out), None)
        return out


class _DispatchCounter(TorchDispatchMode):
    """Counts the aten-level kinds; what is computed from host tensors alone stays on the host."""

    def __init__(self, counter: SyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        counter = self.counter
        on_host = counter.all_host(_tensors(args, kwargs))
        if not counter._inside_counted:
            kind = _dispatch_kind(func, args, kwargs)
            if kind is not None and (kind == "device copy" or not on_host):
                counter.record(kind)
        out = func(*args, **kwargs)
        if on_host:
            counter.mark_host(out)
        return out


def train_step_syncs(model: torch.nn.Module, images: list, targets: list[dict],
                     stages: dict[Callable, str] | None = None) -> SyncCounter:
    """The syncs of one training step of a detection model (forward, then backward of the summed losses).

    stages: as SyncCounter's; maskrcnn_stages() when None. Leaves the model in training mode.
    """
    model.train()
    with SyncCounter(maskrcnn_stages() if stages is None else stages) as counter:
        losses = model(images, targets)
        sum(losses.values()).backward()
    return counter


def inference_syncs(model: torch.nn.Module, images: list,
                    stages: dict[Callable, str] | None = None) -> tuple[SyncCounter, list[dict]]:
    """The syncs of one inference (eval mode, no_grad) -> (counter, the detections). Leaves the model in eval mode."""
    model.eval()
    with torch.no_grad(), SyncCounter(maskrcnn_stages() if stages is None else stages) as counter:
        detections = model(images)
    return counter, detections


def maskrcnn_stages() -> dict[Callable, str]:
    """Our MaskRCNN's stages for SyncCounter, in pipeline order: which function's frames make up which stage.

    Matching and sampling (anchors and proposals) are "sampling"; the loss functions and the mask targets "losses";
    the heads' forward passes (RoIHeads.forward / detect, predict_masks) "heads"; turning their outputs into
    detections (decode_predictions, select_detections, mask_probabilities, MaskRCNN.postprocess) "post-processing",
    as torchvision's postprocess_detections, maskrcnn_inference and transform.postprocess.
    """
    from minimaskrcnn import losses, masks, matching, model, roi_heads, roi_ops, rpn
    from minimaskrcnn.backbone import BackboneWithFPN

    return {
        model.check_images: "input checks",
        model.check_targets: "input checks",
        model.MaskRCNN.transform: "transform",
        BackboneWithFPN: "backbone",
        rpn.RegionProposalNetwork.forward: "rpn",
        rpn.assign_targets: "sampling",
        matching.Matcher.__call__: "sampling",
        matching.BalancedSampler.__call__: "sampling",
        roi_heads.sample_proposals: "sampling",
        roi_heads.positive_rois: "sampling",
        roi_ops.MultiScaleRoIPooler: "roi pooling",
        roi_heads.RoIHeads.forward: "heads",
        roi_heads.RoIHeads.detect: "heads",
        rpn.rpn_losses: "losses",
        losses.classifier_loss: "losses",
        losses.box_regression_loss: "losses",
        losses.mask_loss: "losses",
        masks.mask_targets: "losses",
        roi_heads.decode_predictions: "post-processing",
        roi_heads.select_detections: "post-processing",
        roi_heads.mask_probabilities: "post-processing",
        model.MaskRCNN.postprocess: "post-processing",
        torch.autograd.backward: "backward",
    }
