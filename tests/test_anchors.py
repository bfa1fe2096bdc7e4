"""Tests for minimaskrcnn.anchors: rounded cell anchors, grid order on a hand-checked 2x2 map, generator levels."""
import pytest
import torch

from minimaskrcnn.anchors import AnchorGenerator, cell_anchors, grid_anchors

CELL_32 = [[-23.0, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]]


def test_cell_anchors_rounded_like_the_reference():
    assert cell_anchors((32,), (0.5, 1.0, 2.0)).tolist() == CELL_32
    # ratio-major, then size: (r=0.5, s=16), (r=0.5, s=32), (r=1, s=16), (r=1, s=32)
    cell = cell_anchors((16, 32), (0.5, 1.0))
    assert cell.tolist() == [[-11.0, -6, 11, 6], [-23, -11, 23, 11], [-8, -8, 8, 8], [-16, -16, 16, 16]]
    # each anchor keeps (about) the area size**2 and its ratio h / w
    cell = cell_anchors((128,), (0.5, 1.0, 2.0))
    w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    assert torch.allclose(w * h, torch.full((3,), 128.0**2), rtol=0.02)
    assert torch.allclose(h / w, torch.tensor([0.5, 1.0, 2.0]), rtol=0.02)


def test_grid_on_2x2_map_by_hand():
    cell = torch.tensor(CELL_32)
    anchors = grid_anchors(cell, (2, 2), (16, 8))  # stride_y 16, stride_x 8
    assert anchors.shape == (2 * 2 * 3, 4)
    expected = []
    for y in (0, 16):  # rows first
        for x in (0, 8):  # then columns
            for c in CELL_32:  # then the A anchors of the location
                expected.append([c[0] + x, c[1] + y, c[2] + x, c[3] + y])
    assert anchors.tolist() == expected


def test_generator_levels_strides_and_counts():
    gen = AnchorGenerator(((32,), (64, 128)), ((0.5, 1.0, 2.0), (1.0,)))
    assert gen.num_anchors_per_location() == [3, 2]
    levels = gen((64, 96), [(16, 24), (4, 6)])
    assert [lv.shape for lv in levels] == [(16 * 24 * 3, 4), (4 * 6 * 2, 4)]
    assert levels[0][:3].tolist() == CELL_32
    assert levels[0][3:6].tolist() == (torch.tensor(CELL_32) + torch.tensor([4.0, 0, 4, 0])).tolist()  # stride 4
    # last location of level 1: (x, y) = (5 * 16, 3 * 16)
    assert levels[1][-1].tolist() == [80 - 64, 48 - 64, 80 + 64, 48 + 64]
    # stride from padded size // feature size per axis
    levels = gen((64, 64), [(16, 8), (4, 4)])
    assert levels[0][3, 0] - levels[0][0, 0] == 8  # next column: x stride 64 // 8
    assert levels[0][8 * 3, 1] - levels[0][0, 1] == 4  # next row: y stride 64 // 16


def test_generator_bad_config():
    with pytest.raises(ValueError, match="per level"):
        AnchorGenerator(((32,), (64,)), ((1.0,),))
    with pytest.raises(ValueError, match="feature levels"):
        AnchorGenerator(((32,),), ((1.0,),))((64, 64), [(16, 16), (8, 8)])


@pytest.mark.reference
def test_matches_torchvision_anchor_generator():
    pytest.importorskip("torchvision")
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    sizes, ratios = ((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5
    feature_sizes = [(50, 68), (25, 34), (13, 17), (7, 9), (4, 5)]
    images = ImageList(torch.zeros(2, 3, 800, 1088), [(800, 1066), (790, 1088)])
    feats = [torch.zeros(2, 1, h, w) for h, w in feature_sizes]
    expected = TVAnchorGenerator(sizes, ratios)(images, feats)[0]
    ours = torch.cat(AnchorGenerator(sizes, ratios)((800, 1088), feature_sizes))
    assert torch.equal(ours, expected)
