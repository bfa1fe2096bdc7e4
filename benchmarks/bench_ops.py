"""Speed of the geometry operators: box_iou (1000 x 1000) and nms (1000, 5000, 20000 boxes), ours vs torchvision.

usage: python benchmarks/bench_ops.py            (ours only)
       .venv-reference/bin/python benchmarks/bench_ops.py   (also torchvision.ops, with the ratio ours / torchvision)

Boxes are "realistic": jittered copies of a few hundred object boxes in a 1000-px image, scores random, the way
raw detections pile up around objects, so NMS keeps a small fraction of them. Times are the median of repeats,
single-threaded (torch.set_num_threads(1)) so both sides run under the same conditions. Each nms line also gives
the time of the GPU's sync-free path (NMS_SEGMENT segments, what nms runs on a GPU) run here on the CPU, as a ratio to
the CPU path that nms takes here (same boxes kept, asserted).

Figures, with the date, machine and command of each run: BENCHMARKS.md ("box_iou and nms"). The target: nms on
5000 boxes within 3x of torchvision's compiled nms.
"""
import statistics
import time

import torch

from minimaskrcnn.boxes import _sorted_nms, box_iou, nms

try:
    import torchvision
except ImportError:  # ours only
    torchvision = None


def clustered_boxes(n: int, objects: int, generator: torch.Generator, image_size: float = 1000.0):
    """n boxes: Tensor[n, 4], jittered (std 8 % of the size) around `objects` random boxes of 16..256 px."""
    size = torch.exp(torch.empty(objects, 2).uniform_(2.77, 5.55, generator=generator))  # 16..256 px
    centre = torch.rand(objects, 2, generator=generator) * image_size
    pick = torch.randint(0, objects, (n,), generator=generator)
    wh = size[pick] * torch.exp(torch.randn(n, 2, generator=generator) * 0.08)
    xy = centre[pick] + torch.randn(n, 2, generator=generator) * 0.08 * size[pick]
    return torch.cat((xy - wh / 2, xy + wh / 2), dim=1)


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row(name: str, ours: float, ref: float | None) -> str:
    text = f"{name:<28} ours {ours * 1e3:9.2f} ms"
    if ref is not None:
        text += f"   torchvision {ref * 1e3:9.2f} ms   ratio {ours / ref:5.2f}x"
    return text


def main():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    a, b = clustered_boxes(1000, 100, g), clustered_boxes(1000, 100, g)
    ref = timeit(lambda: torchvision.ops.box_iou(a, b), 20) if torchvision else None
    print(row("box_iou 1000 x 1000", timeit(lambda: box_iou(a, b), 20), ref))
    for n, objects, repeats in [(1000, 50, 20), (5000, 200, 10), (20000, 500, 3)]:
        boxes, scores = clustered_boxes(n, objects, g), torch.rand(n, generator=g)
        keep = nms(boxes, scores, 0.5)
        ref = None
        if torchvision:
            expected = torchvision.ops.nms(boxes, scores, 0.5)
            assert keep.tolist() == expected.tolist(), "nms differs from torchvision"
            ref = timeit(lambda: torchvision.ops.nms(boxes, scores, 0.5), repeats)
        ours = timeit(lambda: nms(boxes, scores, 0.5), repeats)
        assert torch.equal(_sorted_nms(boxes, scores, 0.5, None, None, sync_free=True), keep)
        gpu_path = timeit(lambda: _sorted_nms(boxes, scores, 0.5, None, None, sync_free=True), repeats)
        print(row(f"nms {n} boxes (keeps {len(keep)})", ours, ref) + f"   GPU path here {gpu_path / ours:5.2f}x")


if __name__ == "__main__":
    main()
