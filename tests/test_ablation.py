"""Tests for minimaskrcnn.ablation: the controlled mask-branch harness (tiny runs only: seconds, not minutes)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from minimaskrcnn.ablation import (PAIRS, PAPER, STUDIES, Data, MaskBranch, Setup, Variant, class_competition,
                                   crop_ious, jitter_boxes, main, paper_table, run_study, summarize, target_crops)
from minimaskrcnn.losses import mask_loss


@pytest.mark.parametrize("variant, message", [
    (Variant("odd", stride=12), "'odd': stride must be a power of two >= 4, got 12"),
    (Variant("bad", pool="avg"), "'bad': pool must be one of \\('align', 'pool'\\), got 'avg'"),
    (Variant("bad", mask_loss="hinge"), "'bad': mask_loss must be one of \\('sigmoid', 'softmax'\\), got 'hinge'"),
    (Variant("bad", head="rnn"), "'bad': head must be one of \\('fcn', 'mlp'\\), got 'rnn'"),
    (Variant("both", mask_loss="softmax", class_agnostic=True), "'both': a softmax needs a channel per class"),
])
def test_variants_are_checked_before_any_work(variant, message):
    with pytest.raises(ValueError, match=message):
        MaskBranch(variant, Setup(), 5)


@pytest.mark.parametrize("variant", [v for study in STUDIES.values() for v in study], ids=lambda v: v.name)
def test_mask_branch_shapes(variant):
    net = MaskBranch(variant, Setup(), num_classes=5)
    rois = torch.tensor([[0, 10.0, 12.0, 40.0, 50.0], [1, 0.0, 0.0, 127.0, 127.0], [1, 60.0, 60.0, 64.0, 63.0]])
    logits = net(torch.rand(2, 3, 128, 128), rois)
    assert logits.shape == (3, 1 if variant.class_agnostic else 5, 28, 28)  # (R, L, M, M)
    assert net.stem(torch.rand(1, 3, 128, 128)).shape[-1] == 128 // variant.stride
    probs = net.probabilities(logits, torch.tensor([1, 4, 2]))
    assert probs.shape == (3, 1, 28, 28) and bool(((probs >= 0) & (probs <= 1)).all())


def test_softmax_loss_is_the_cross_entropy_over_classes():
    net = MaskBranch(Variant("softmax", mask_loss="softmax"), Setup(), num_classes=3)
    logits = torch.tensor([[[[1.0, 0.0]], [[2.0, -1.0]], [[0.5, 3.0]]]])  # (R 1, K+1 3, 1, M 2)
    targets = torch.tensor([[[1.0, 0.25]]])  # inside the mask, then a border pixel a quarter inside
    # by hand: pixel 1 is class 2 (log-softmax of 0.5 among 1, 2, 0.5); pixel 2 is a quarter class 2, 3/4 background
    pixel1 = 0.5 - math.log(math.exp(1) + math.exp(2) + math.exp(0.5))
    norm2 = math.log(math.exp(0) + math.exp(-1) + math.exp(3))
    pixel2 = 0.25 * (3 - norm2) + 0.75 * (0 - norm2)
    assert net.loss(logits, torch.tensor([2]), targets).item() == pytest.approx(-(pixel1 + pixel2) / 2)
    hard = torch.tensor([[[1.0, 0.0]]])  # 0/1 targets: exactly F.cross_entropy with class 2 inside, 0 outside
    assert net.loss(logits, torch.tensor([2]), hard).item() == pytest.approx(
        F.cross_entropy(logits, torch.tensor([[[2, 0]]])).item())
    probs = net.probabilities(logits, torch.tensor([2]))  # the class's share of the softmax, not a sigmoid
    assert torch.allclose(probs[0, 0], logits.softmax(1)[0, 2])


def test_sigmoid_loss_reads_the_class_channel_or_the_one_agnostic_channel():
    logits, targets = torch.randn(2, 5, 28, 28), torch.rand(2, 28, 28)
    labels = torch.tensor([3, 1])
    specific = MaskBranch(Variant("specific"), Setup(), 5)
    assert specific.loss(logits, labels, targets).item() == pytest.approx(mask_loss(logits, labels, targets).item())
    agnostic = MaskBranch(Variant("agnostic", class_agnostic=True), Setup(), 5)
    one = logits[:, :1]  # (R, 1, M, M): the label does not matter
    expected = F.binary_cross_entropy_with_logits(one[:, 0], targets).item()
    assert agnostic.loss(one, labels, targets).item() == pytest.approx(expected)
    assert torch.equal(agnostic.probabilities(one, labels), one.sigmoid())
    assert torch.equal(specific.probabilities(logits, labels)[:, 0], logits.sigmoid()[[0, 1], [3, 1]])


@pytest.mark.parametrize("head, reaches_far", [("fcn", False), ("mlp", True)])
def test_fcn_keeps_layout_mlp_mixes_it(head, reaches_far):
    """A change in one corner of the pooled features moves the far corner of the mask only through an MLP."""
    setup = Setup()
    net = MaskBranch(Variant(head, head=head), setup, num_classes=5)
    features = torch.rand(1, setup.channels, setup.pool_size, setup.pool_size)
    changed = features.clone()
    changed[0, :, 0, 0] += 5.0  # top-left pooled cell
    with torch.no_grad():
        before, after = net.head(features), net.head(changed)
    assert before.shape == (1, 5, setup.mask_size, setup.mask_size)
    assert not torch.equal(before[..., :4, :4], after[..., :4, :4])  # the corner itself moves
    assert (not torch.equal(before[..., -4:, -4:], after[..., -4:, -4:])) == reaches_far


def test_mlp_head_widths():
    setup = Setup()
    linears = [m for m in MaskBranch(Variant("mlp", head="mlp"), setup, 5).head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (setup.channels * setup.pool_size**2, 128), (128, 128), (128, 5 * setup.mask_size**2)]


def test_jitter_moves_each_edge_within_its_fraction():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]] * 500)  # w 20, h 40
    moved = jitter_boxes(boxes, 0.1, torch.Generator().manual_seed(0)) - boxes
    limits = torch.tensor([2.0, 4.0, 2.0, 4.0])
    assert bool((moved.abs() <= limits).all()) and bool((moved.abs().amax(0) > 0.9 * limits).all())


def test_summarize_means_spreads_and_paired_differences():
    runs = [{"variant": v, "seed": s, "AP": ap, "AP50": 0.9, "AP75": ap}
            for v, s, ap in (("pool", 0, 0.40), ("pool", 1, 0.42), ("align", 0, 0.50), ("align", 1, 0.56),
                             ("pool s32", 0, 0.10), ("pool s32", 1, 0.30), ("align s32", 0, 0.20),
                             ("align s32", 1, 0.30))]
    table = summarize(runs, [("align", "pool"), ("align s32", "pool s32")])
    assert table["pool"]["AP"] == pytest.approx((41.0, 2**0.5))  # points; sample standard deviation
    assert table["align"]["AP50"] == pytest.approx((90.0, 0.0))
    assert table["align - pool"]["AP"] == pytest.approx((12.0, 4 / 2**0.5))  # differences 10 and 14
    assert table["align s32 - pool s32"]["AP"] == pytest.approx((5.0, 10 / 2**0.5))  # each with its own stride
    assert set(table) == {"pool", "align", "pool s32", "align s32", "align - pool", "align s32 - pool s32"}
    with pytest.raises(ValueError, match="pair \\('align', 'softmax'\\) names a variant with no runs"):
        summarize(runs, [("align", "softmax")])


def test_table2_pairs_and_paper_numbers_match_the_study():
    names = [v.name for v in STUDIES["table2"]]
    assert len(set(names)) == len(names)
    assert set(PAPER["table2"]) == set(PAIRS["table2"]) and all(a in names and b in names for a, b in PAIRS["table2"])
    variants = {v.name: vars(v) for v in STUDIES["table2"]}
    for a, b in PAIRS["table2"]:  # the two arms of a pair differ in exactly one field besides the name
        assert len({k for k in variants[a] if k != "name" and variants[a][k] != variants[b][k]}) == 1, (a, b)
    # the paper's differences as its text states them (section 4.2): 5.5, about 3, 7.3 (AP75 10.5), 0.6, 2.1
    paper = PAPER["table2"]
    assert paper["RoIAlign s8", "softmax"]["choice"]["AP"] - paper["RoIAlign s8", "softmax"]["alternative"]["AP"] \
        == pytest.approx(5.5)
    s32 = paper["RoIAlign s32", "RoIPool s32"]
    assert (s32["choice"]["AP"] - s32["alternative"]["AP"], s32["choice"]["AP75"] - s32["alternative"]["AP75"]) == \
        pytest.approx((7.3, 10.5))
    mlp = paper["RoIAlign s8", "MLP head"]
    assert mlp["choice"]["AP"] - mlp["alternative"]["AP"] == pytest.approx(2.1)


def test_paper_table_has_a_line_per_pair():
    runs = [{"variant": v.name, "seed": s, "AP": 0.5 + 0.01 * i + 0.002 * s, "AP50": 0.9, "AP75": 0.4}
            for s in (0, 1) for i, v in enumerate(STUDIES["table2"])]
    table = paper_table({"summary": summarize(runs, PAIRS["table2"])})
    lines = table.splitlines()
    assert len(lines) == 2 + len(PAIRS["table2"])
    assert "| RoIAlign s8 vs softmax | Table 2b (ResNet-50-C4): sigmoid vs softmax | 50.1 ± 0.1 vs 51.1 ± 0.1 | " \
           "-1.0 ± 0.0 | +0.0 ± 0.0 | 30.3 vs 24.8 | +5.5 | +6.4 |" in lines
    assert "| 30.3 vs 29.7 | +0.6 | not given |" in table  # class-agnostic: the paper gives AP only


def test_main_refuses_to_overwrite(tmp_path):
    out = tmp_path / "results.json"
    out.write_text("{}")
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--steps", "1"])
    assert out.read_text() == "{}"


def test_main_help_describes_the_studies(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "table2: RoIAlign s8, softmax, RoIPool s8, class-agnostic, MLP head" in " ".join(text.split())


def test_a_tiny_study_runs_end_to_end(tmp_path):
    setup = Setup(train_images=3, val_images=2, steps=2, batch=2)
    runs = run_study(STUDIES["table2"], setup, [0, 1], tmp_path, log=lambda line: None, crops=2)
    assert [r["variant"] for r in runs] == [v.name for v in STUDIES["table2"]] * 2
    for run in runs:
        assert 0.0 <= run["AP"] <= run["AP50"] <= 1.0 and run["seed"] in (0, 1)
        if run["seed"] == 0:  # the first seed's runs keep the first validation objects' masks
            assert torch.tensor(run["crops"]).shape == (2, 28, 28)
        else:
            assert "crops" not in run
    json.dumps(runs)  # what main writes


def test_class_competition_reads_the_softmax_inside_and_outside_the_masks():
    net = MaskBranch(Variant("softmax", mask_loss="softmax"), Setup(), num_classes=3)
    masks = torch.zeros(1, 64, 64)
    masks[0, 16:48, 16:32] = 1  # the left half of the box: columns 0-13 of its 28 x 28 frame
    target = {"boxes": torch.tensor([[16.0, 16.0, 48.0, 48.0]]), "labels": torch.tensor([2]), "masks": masks}
    data = Data(train=[], val=[(torch.rand(3, 64, 64), target)], val_set=None, num_classes=3)
    # logits (background, class 1, class 2) = (0, 1, 0) on the left half: foreground 1 - 1/(2+e), own class
    # 1/(2+e); (20, 0, 0) on the right half: background almost surely
    logits = torch.tensor([0.0, 1.0, 0.0])[:, None, None].repeat(1, 28, 28)
    logits[:, :, 14:] = torch.tensor([20.0, 0.0, 0.0])[:, None, None]
    net.forward = lambda images, rois: logits[None].expand(len(rois), 3, 28, 28)
    result = class_competition(net, data)
    assert result["foreground"] == pytest.approx(1 - 1 / (2 + math.e))
    assert result["own class"] == pytest.approx(1 / (2 + math.e))
    assert result["class accuracy"] == 0.0  # class 1 is the most likely everywhere; the object is class 2
    assert result["foreground outside"] < 0.01  # the right half (and one border pixel of the left half's edge)
    with pytest.raises(ValueError, match="'sigmoid' has no softmax"):
        class_competition(MaskBranch(Variant("sigmoid"), Setup(), 3), data)


def test_target_crops_and_their_ious():
    masks = torch.zeros(2, 64, 64)
    masks[0, 16:48, 16:32] = 1  # the left half of its box
    masks[1, 0:8, 0:8] = 1  # all of its box
    target = {"boxes": torch.tensor([[16.0, 16.0, 48.0, 48.0], [0.0, 0.0, 8.0, 8.0]]), "labels": torch.tensor([1, 2]),
              "masks": masks}
    data = Data(train=[], val=[(torch.rand(3, 64, 64), target)] * 2, val_set=None, num_classes=3)
    targets = target_crops(data, 28)
    assert targets.shape == (4, 28, 28)  # every object of every validation image, in order
    assert (targets[0, :, :13] > 0.5).all() and (targets[0, :, 14:] < 0.5).all()  # the left half of the frame
    assert (targets[1] > 0.5).float().mean() > 0.8  # nearly all of its frame (its border is soft)
    assert torch.equal(targets[2:], targets[:2])  # the second image's objects follow the first's
    full, empty = torch.ones(28, 28), torch.zeros(28, 28)
    ious = crop_ious(torch.stack([targets[0], full, empty, full]), torch.stack([targets[0], targets[0], full, full]))
    assert ious.tolist() == pytest.approx([1.0, float((targets[0] > 0.5).float().mean()), 0.0, 1.0])
