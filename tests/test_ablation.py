"""Tests for minimaskrcnn.ablation: the controlled RoIPool / RoIAlign harness (tiny runs only: seconds, not minutes)."""
import json

import pytest
import torch

from minimaskrcnn.ablation import (STUDIES, MaskBranch, Setup, Variant, jitter_boxes, main, run_study,
                                   summarize)


def test_variants_are_checked_before_any_work():
    with pytest.raises(ValueError, match="'odd': stride must be a power of two >= 4, got 12"):
        MaskBranch(Variant("odd", stride=12), Setup(), 5)
    with pytest.raises(ValueError, match="'bad': pool must be 'align' or 'pool', got 'avg'"):
        MaskBranch(Variant("bad", pool="avg"), Setup(), 5)


@pytest.mark.parametrize("variant", [v for study in STUDIES.values() for v in study])
def test_mask_branch_shapes(variant):
    net = MaskBranch(variant, Setup(), num_classes=5)
    rois = torch.tensor([[0, 10.0, 12.0, 40.0, 50.0], [1, 0.0, 0.0, 127.0, 127.0], [1, 60.0, 60.0, 64.0, 63.0]])
    assert net(torch.rand(2, 3, 128, 128), rois).shape == (3, 5, 28, 28)  # (R, K+1, M, M)
    assert net.stem(torch.rand(1, 3, 128, 128)).shape[-1] == 128 // variant.stride


def test_jitter_moves_each_edge_within_its_fraction():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]] * 500)  # w 20, h 40
    moved = jitter_boxes(boxes, 0.1, torch.Generator().manual_seed(0)) - boxes
    limits = torch.tensor([2.0, 4.0, 2.0, 4.0])
    assert bool((moved.abs() <= limits).all()) and bool((moved.abs().amax(0) > 0.9 * limits).all())


def test_summarize_means_spreads_and_paired_differences():
    runs = [{"variant": v, "seed": s, "AP": ap, "AP50": 0.9, "AP75": ap}
            for v, s, ap in (("pool", 0, 0.40), ("pool", 1, 0.42), ("align", 0, 0.50), ("align", 1, 0.56))]
    table = summarize(runs, baseline="pool")
    assert table["pool"]["AP"] == pytest.approx((41.0, 2**0.5))  # points; sample standard deviation
    assert table["align"]["AP50"] == pytest.approx((90.0, 0.0))
    assert table["align - pool"]["AP"] == pytest.approx((12.0, 4 / 2**0.5))  # differences 10 and 14


def test_main_refuses_to_overwrite(tmp_path):
    out = tmp_path / "results.json"
    out.write_text("{}")
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--steps", "1"])
    assert out.read_text() == "{}"


def test_a_tiny_study_runs_end_to_end(tmp_path):
    setup = Setup(train_images=3, val_images=2, steps=2, batch=2)
    runs = run_study(STUDIES["roi_op"], setup, [0], tmp_path, log=lambda line: None, crops=2)
    assert [r["variant"] for r in runs] == ["RoIPool", "RoIAlign"]
    for run in runs:
        assert 0.0 <= run["AP"] <= run["AP50"] <= 1.0 and run["seed"] == 0
        assert torch.tensor(run["crops"]).shape == (2, 28, 28)  # the first validation objects' masks
    json.dumps(runs)  # what main writes
