"""Widget callbacks of notebooks 04 and 05 (minimaskrcnn/widgets/rpn.py)."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from minimaskrcnn.anchors import AnchorGenerator
from minimaskrcnn.backbone import build_backbone
from minimaskrcnn.model import MaskRCNNConfig, rpn_settings
from minimaskrcnn.rpn import RegionProposalNetwork, RPNHead
from minimaskrcnn.widgets.rpn import feature_explorer, feature_view, proposal_explorer, proposals_view


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    image = torch.rand(3, 64, 64)
    backbone = build_backbone(18, "gn", 5, fpn_channels=8, base_width=8).eval()
    with torch.no_grad():
        features = backbone(image[None])
    rpn = RegionProposalNetwork(AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 5),
                                RPNHead(8, 3), **rpn_settings(MaskRCNNConfig())).eval()
    with torch.no_grad():
        anchors, level_sizes, objectness, _, proposals = rpn.predict(list(features.values()), (64, 64))
    return image, features, proposals[0], objectness[0], level_sizes


def test_feature_view(setup):
    image, features, *_ = setup
    fig = feature_view(image, features, "p3", 5)
    assert fig.axes[1].get_title() == "p3, channel 5"
    assert fig.axes[1].images[0].get_array().shape == (8, 8)
    with pytest.raises(ValueError, match="level"):
        feature_view(image, features, "p9", 0)
    with pytest.raises(ValueError, match="channel"):
        feature_view(image, features, "p2", 8)


def drawn(ax):
    """The boxes a draw_proposals panel shows: one path per box in its PolyCollection."""
    return len(ax.collections[0].get_paths())


def test_proposals_view_nms_reduces(setup):
    image, _, proposals, objectness, level_sizes = setup
    _, before, after = proposals_view(image, proposals, objectness, level_sizes, (64, 64), 100, 1000, 0.5)
    assert len(before) == sum(min(100, n) for n in level_sizes)  # nothing removed before NMS (all boxes big enough)
    assert 0 < len(after) < len(before)
    _, _, fewer = proposals_view(image, proposals, objectness, level_sizes, (64, 64), 100, 10, 0.5)
    assert len(fewer) == 10 and torch.equal(fewer, after[:10])  # the post-NMS top-n keeps the best survivors
    _, _, looser = proposals_view(image, proposals, objectness, level_sizes, (64, 64), 100, 1000, 0.9)
    assert len(looser) >= len(after)


def test_proposals_view_draws_what_the_sliders_select(setup):
    image, _, proposals, objectness, level_sizes = setup
    fig, before, after = proposals_view(image, proposals, objectness, level_sizes, (64, 64), 20, 15, 0.7)
    left, right = fig.axes
    assert drawn(left) == len(before) == sum(min(20, n) for n in level_sizes)
    assert drawn(right) == len(after) == 15
    fig, more_before, more_after = proposals_view(image, proposals, objectness, level_sizes, (64, 64), 60, 40, 0.7)
    left, right = fig.axes
    assert drawn(left) == len(more_before) > len(before)  # moving the pre-NMS slider changes the left picture
    assert drawn(right) == len(more_after) > len(after)  # and the post-NMS slider the right one
    # the boxes drawn are the boxes returned (the corners of each path)
    paths = right.collections[0].get_paths()
    corners = torch.from_numpy(np.stack([path.vertices[[0, 2]].reshape(-1) for path in paths]))  # (x1, y1, x2, y2)
    distance = (corners.float()[:, None] - more_after[None]).abs().amax(dim=-1)  # (drawn, returned)
    assert (distance.min(dim=0).values < 1e-4).all() and (distance.min(dim=1).values < 1e-4).all()


def test_explorers_build(setup):
    image, features, proposals, objectness, level_sizes = setup
    assert feature_explorer(image, features).children
    assert proposal_explorer(image, proposals, objectness, level_sizes, (64, 64)).children
