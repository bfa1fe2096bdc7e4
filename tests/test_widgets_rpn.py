"""Widget callbacks of notebooks 04 and 05 (minimaskrcnn/widgets/rpn.py)."""
import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from minimaskrcnn.anchors import AnchorGenerator
from minimaskrcnn.backbone import build_backbone
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
                                RPNHead(8, 3)).eval()
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


def test_proposals_view_nms_reduces(setup):
    image, _, proposals, objectness, level_sizes = setup
    _, before, after = proposals_view(image, proposals, objectness, level_sizes, (64, 64), 100, 1000, 0.5)
    assert before == sum(min(100, n) for n in level_sizes)  # nothing removed before NMS (all boxes are big enough)
    assert 0 < after < before
    _, _, fewer = proposals_view(image, proposals, objectness, level_sizes, (64, 64), 100, 10, 0.5)
    assert fewer == 10
    _, _, looser = proposals_view(image, proposals, objectness, level_sizes, (64, 64), 100, 1000, 0.9)
    assert looser >= after


def test_explorers_build(setup):
    image, features, proposals, objectness, level_sizes = setup
    assert feature_explorer(image, features).children
    assert proposal_explorer(image, proposals, objectness, level_sizes, (64, 64)).children
