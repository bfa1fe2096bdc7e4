"""Speed and peak memory of minimaskrcnn.roi_ops.roi_align, next to torchvision.ops.roi_align in the same run.

Run:  .venv-reference/bin/python benchmarks/bench_roi_align.py   (torchvision is timed when it imports)
      .venv/bin/python benchmarks/bench_roi_align.py             (ours only)

Loads (sampling_ratio 2, aligned False, spatial_scale 1/4, random boxes, float32, CPU):
  (a) 8 x 256 x 32 x 32 features, 4096 RoIs, 7 x 7 (the tiny preset's box head; boxes 8..128 px in 128-px images)
  (b) 2 x 256 x 200 x 272 features, 1024 RoIs, 7 x 7 (the reference's P2 level; boxes 16..112 px, the sizes
      that assign_levels sends to P2, in 800 x 1088 images)
  (m) the 14 x 14 mask case: (b)'s features, 256 RoIs, 14 x 14
Each case runs in a fresh process; time = median of --repeats runs; peak = growth of the process's peak RSS
during the timed runs (inputs already allocated), so it includes the autograd buffers and the input gradient.

Targets: forward+backward at least 2x torchvision's speed on (a), not slower on (b), peak extra memory on (b) under
1 GiB. Figures, with the date, machine and command of each run, and why ours is faster: BENCHMARKS.md ("roi_align").
"""
import argparse
import multiprocessing as mp
import resource
import statistics
import time

import torch

LOADS = {
    "a": dict(shape=(8, 256, 32, 32), rois=4096, out=7, image=(128, 128), sizes=(8, 128)),
    "b": dict(shape=(2, 256, 200, 272), rois=1024, out=7, image=(800, 1088), sizes=(16, 112)),
    "m": dict(shape=(2, 256, 200, 272), rois=256, out=14, image=(800, 1088), sizes=(16, 112)),
}


def make_inputs(load, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = load["shape"][0]
    x = torch.randn(*load["shape"], generator=g, requires_grad=True)
    img_h, img_w = load["image"]
    lo, hi = load["sizes"]
    wh = lo + (hi - lo) * torch.rand(load["rois"], 2, generator=g)
    xy = torch.rand(load["rois"], 2, generator=g) * (torch.tensor([img_w, img_h]) - wh)
    index = torch.randint(0, n, (load["rois"], 1), generator=g).float()
    return x, torch.cat((index, xy, xy + wh), dim=1)  # (R, 5) batch index + (x1, y1, x2, y2)


def measure(impl, name, repeats, queue):
    torch.set_num_threads(2)
    if impl == "ours":
        from minimaskrcnn.roi_ops import roi_align
    else:
        from torchvision.ops import roi_align
    load = LOADS[name]
    x, rois = make_inputs(load)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fwd, both = [], []
    for _ in range(repeats):
        x.grad = None
        t0 = time.perf_counter()
        y = roi_align(x, rois, load["out"], 0.25, 2, False)
        t1 = time.perf_counter()
        y.backward(torch.ones_like(y))
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        both.append(t2 - t0)
        del y
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    queue.put((statistics.median(fwd), statistics.median(both), peak_mib))


def run(impl, name, repeats):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(impl, name, repeats, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", default="abm", help="which loads to run (letters of a, b, m)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    try:
        import torchvision  # noqa: F401

        impls = ["ours", "torchvision"]
    except ImportError:
        impls = ["ours"]
    print(f"torch {torch.__version__}, threads 2, repeats {args.repeats} (median)")
    for name in args.loads:
        res = {impl: run(impl, name, args.repeats) for impl in impls}
        for impl, (fwd, both, peak) in res.items():
            print(f"load {name} {impl:12s} forward {fwd * 1e3:8.1f} ms  forward+backward {both * 1e3:8.1f} ms  "
                  f"peak extra RSS {peak:7.1f} MiB")
        if "torchvision" in res:
            (f0, b0, _), (f1, b1, _) = res["ours"], res["torchvision"]
            print(f"load {name} speed-up vs torchvision: forward {f1 / f0:.2f}x  forward+backward {b1 / b0:.2f}x")


if __name__ == "__main__":
    main()
