"""Tests for minimaskrcnn.weights: the name table, and refusing damaged weight files (nothing downloaded)."""
import hashlib
import json
from pathlib import Path

import pytest
import torch

from minimaskrcnn import weights
from minimaskrcnn.model import build_model
from minimaskrcnn.weights import (
    coco_category_names,
    from_torchvision,
    load_checked,
    our_name_to_theirs,
    their_name_to_ours,
    to_torchvision,
)

SHAPES_FILE = Path(__file__).parent / "fixtures" / "torchvision_maskrcnn_resnet50_fpn_state_dict_shapes.json"


@pytest.fixture(scope="module")
def their_shapes() -> dict[str, list[int]]:
    """torchvision's maskrcnn_resnet50_fpn(weights=None) state dict, key -> shape (recorded from torchvision)."""
    return json.loads(SHAPES_FILE.read_text())["keys"]


@pytest.fixture(scope="module")
def our_state_dict() -> dict[str, torch.Tensor]:
    return build_model("r50_fpn", 91).state_dict()


def test_every_torchvision_key_maps_to_one_of_ours_with_its_shape(their_shapes, our_state_dict):
    mapped = {}
    for name, shape in their_shapes.items():
        ours = their_name_to_ours(name)
        if ours is None:
            assert name.endswith(".num_batches_tracked"), name
            continue
        assert ours not in mapped, f"{name} and {mapped[ours]} both map to {ours}"
        mapped[ours] = name
        assert ours in our_state_dict, f"{name} -> {ours}, which build_model('r50_fpn', 91) does not have"
        assert list(our_state_dict[ours].shape) == shape, f"{name} {shape} -> {ours} {list(our_state_dict[ours].shape)}"
    assert set(mapped) == set(our_state_dict), f"ours without a torchvision key: {set(our_state_dict) - set(mapped)}"


def test_every_key_of_ours_maps_back_to_torchvision_with_its_shape(their_shapes, our_state_dict):
    converted = to_torchvision(our_state_dict, num_batches_tracked=True)
    assert list(converted) == list(their_shapes)  # same keys, same order
    for name, value in converted.items():
        assert list(value.shape) == their_shapes[name], name
    assert all(their_name_to_ours(our_name_to_theirs(k)) == k for k in our_state_dict)


def test_from_torchvision_loads_strict_and_round_trips(their_shapes):
    generator = torch.Generator().manual_seed(0)
    theirs = {name: torch.randn(shape, generator=generator) if shape else torch.tensor(7)
              for name, shape in their_shapes.items()}
    model = build_model("r50_fpn", 91)
    model.load_state_dict(from_torchvision(theirs), strict=True)
    back = to_torchvision(model.state_dict())
    expected = {k: v for k, v in theirs.items() if not k.endswith("num_batches_tracked")}
    assert list(back) == list(expected)
    assert all(torch.equal(back[k], expected[k]) for k in expected)


def test_unknown_keys_are_refused_by_name():
    with pytest.raises(KeyError, match="backbone.body.layer9.0.conv1.weightx"):
        from_torchvision({"backbone.body.layer9.0.conv1.weightx": torch.zeros(1)})
    with pytest.raises(KeyError, match="head.something"):
        to_torchvision({"head.something": torch.zeros(1)})
    with pytest.raises(TypeError):
        from_torchvision([("a", torch.zeros(1))])


def saved_with_hash(state_dict: dict, folder: Path, stem: str = "tiny") -> Path:
    """Save state_dict as folder/<stem>-<first 8 hex of its sha256>.pth, torchvision's naming."""
    raw = folder / "raw.pth"
    torch.save(state_dict, raw)
    path = folder / f"{stem}-{hashlib.sha256(raw.read_bytes()).hexdigest()[:8]}.pth"
    raw.rename(path)
    return path


def test_load_checked_reads_a_good_file(tmp_path):
    state_dict = {"a.weight": torch.arange(6.0).reshape(2, 3)}
    loaded = load_checked(saved_with_hash(state_dict, tmp_path))
    assert torch.equal(loaded["a.weight"], state_dict["a.weight"])


def test_tampered_and_truncated_files_are_refused(tmp_path):
    path = saved_with_hash({"a.weight": torch.arange(1000.0)}, tmp_path)
    data = path.read_bytes()
    tampered = tmp_path / "t" / path.name
    tampered.parent.mkdir()
    tampered.write_bytes(data[:-200] + bytes([data[-200] ^ 1]) + data[-199:])
    with pytest.raises(ValueError, match="SHA-256 .* does not start with"):
        load_checked(tampered)
    truncated = tmp_path / "u" / path.name
    truncated.parent.mkdir()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_checked(truncated)
    # a truncated file whose name carries its own (truncated) hash gets past the hash, not past the loader
    cut = data[: len(data) // 2]
    renamed = tmp_path / f"cut-{hashlib.sha256(cut).hexdigest()[:8]}.pth"
    renamed.write_bytes(cut)
    with pytest.raises(ValueError, match="not a readable weights file"):
        load_checked(renamed)


def test_a_file_without_a_hash_in_its_name_is_refused(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="carries no SHA-256 prefix"):
        load_checked(path)


class Payload:
    """An arbitrary object: weights_only loading must refuse to unpickle it."""


def test_arbitrary_pickled_objects_are_refused(tmp_path):
    path = saved_with_hash({"a": Payload()}, tmp_path)
    with pytest.raises(ValueError, match="not a readable weights file"):
        load_checked(path)


def test_download_checks_caches_and_leaves_nothing_behind_on_a_bad_hash(tmp_path):
    source = saved_with_hash({"w": torch.ones(3)}, tmp_path)
    cache = tmp_path / "cache"
    path = weights.download(source.as_uri(), cache)  # file:// URL: the same code path as HTTPS, no network
    assert path == cache / source.name and torch.equal(load_checked(path)["w"], torch.ones(3))
    source.unlink()
    assert weights.download(source.as_uri(), cache) == path  # served from the cache
    wrong = tmp_path / "other-00000000.pth"
    torch.save({"w": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match="does not start with 00000000"):
        weights.download(wrong.as_uri(), cache)
    assert sorted(p.name for p in cache.iterdir()) == [path.name]


def test_load_pretrained_converts_names(tmp_path, monkeypatch):
    theirs = {"rpn.head.cls_logits.weight": torch.ones(3, 256, 1, 1), "backbone.body.bn1.num_batches_tracked":
              torch.tensor(0)}
    source = saved_with_hash(theirs, tmp_path, stem="maskrcnn")
    monkeypatch.setitem(weights.PRETRAINED_URLS, "maskrcnn_resnet50_fpn_coco", source.as_uri())
    ours = weights.load_pretrained("maskrcnn_resnet50_fpn_coco", tmp_path / "cache")
    assert list(ours) == [their_name_to_ours("rpn.head.cls_logits.weight")]
    with pytest.raises(ValueError, match="unknown pretrained weights"):
        weights.load_pretrained("resnet51")


def test_load_pretrained_backbone_drops_the_classifier(tmp_path, monkeypatch):
    theirs = {"conv1.weight": torch.ones(64, 3, 7, 7), "fc.weight": torch.ones(1000, 2048)}
    source = saved_with_hash(theirs, tmp_path, stem="resnet50")
    monkeypatch.setitem(weights.PRETRAINED_URLS, "resnet50_imagenet", source.as_uri())
    ours = weights.load_pretrained("resnet50_imagenet", tmp_path / "cache")
    body = build_model("r50_fpn", 91).backbone.body.state_dict()
    assert list(ours) == [k for k in body if k.endswith("weight") and body[k].shape == (64, 3, 7, 7)]


def test_published_file_names_carry_their_hash():
    for name, url in weights.PRETRAINED_URLS.items():
        assert url.startswith("https://download.pytorch.org/models/"), name
        assert len(weights.expected_hash_prefix(url.rsplit("/", 1)[-1])) == 8
        assert weights.cached_path(name, "/x").name == url.rsplit("/", 1)[-1]


def test_set_frozen_bn_eps():
    model = build_model("r50_fpn", 91)
    assert weights.set_frozen_bn_eps(model, 0.0) == 53  # stem + 16 blocks x 3 + 4 downsamples
    assert all(m.eps == 0.0 for m in model.modules() if type(m).__name__ == "FrozenBatchNorm2d")


def test_coco_category_names():
    names = coco_category_names()
    assert len(names) == 91 and names[0] == "__background__"
    assert (names[1], names[18], names[90]) == ("person", "dog", "toothbrush")
    assert names.count("N/A") == 10 and len(set(names)) == 82  # 80 classes, background, unused ids
