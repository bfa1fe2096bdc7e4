"""Tests for minimaskrcnn.weights: the state-dict layout, refusing damaged weight files, downloads from a local HTTP
server on 127.0.0.1 (nothing reaches the internet), and starting a model from COCO / ImageNet / local weights."""
import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch

from minimaskrcnn import weights
from minimaskrcnn.model import build_model
from minimaskrcnn.weights import (
    coco_category_names,
    from_torchvision,
    load_backbone_weights,
    load_checked,
    load_detector_weights,
    load_initial_weights,
    read_weights_file,
    resnet_from_torchvision,
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


def test_both_state_dicts_have_the_same_keys_and_shapes_and_the_layout_covers_them(their_shapes, our_state_dict):
    counters = [k for k in their_shapes if k.endswith(".num_batches_tracked")]
    theirs = {k: shape for k, shape in their_shapes.items() if k not in counters}
    assert {k: list(v.shape) for k, v in our_state_dict.items()} == theirs  # our names are torchvision's
    assert all(not their_shapes[k] for k in counters)  # the batch counters are scalars
    for name in [*their_shapes, *our_state_dict]:
        weights.check_key(name, "either")
    unused = [p for p in weights.KEY_PATTERNS if not any(weights._regex(p).match(k) for k in our_state_dict)]
    assert unused == []


def test_every_key_of_ours_maps_back_to_torchvision_with_its_shape(their_shapes, our_state_dict):
    converted = to_torchvision(our_state_dict, num_batches_tracked=True)
    assert list(converted) == list(their_shapes)  # same keys, same order
    for name, value in converted.items():
        assert list(value.shape) == their_shapes[name], name


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


class Writer:
    """Unpickling this writes `marker`: what a malicious weights file could do (os.system, ...)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (self.marker, "code ran")


def test_a_weights_file_that_would_run_code_is_refused_without_advice_to_unpickle_it(tmp_path):
    path, marker = tmp_path / "weights.pt", tmp_path / "marker"
    torch.save({"backbone.body.conv1.weight": torch.zeros(1), "note": Writer(marker)}, path)
    with pytest.raises(ValueError, match=f"^{path} holds objects other than tensors .*pathlib.*could run code") as err:
        weights.read_weights_file(path)
    assert "weights_only` set to `False" not in str(err.value) and not marker.exists()


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


def test_load_pretrained_drops_the_batch_counters(tmp_path, monkeypatch):
    theirs = {"rpn.head.cls_logits.weight": torch.ones(3, 256, 1, 1), "backbone.body.bn1.num_batches_tracked":
              torch.tensor(0)}
    source = saved_with_hash(theirs, tmp_path, stem="maskrcnn")
    monkeypatch.setitem(weights.PRETRAINED_URLS, "maskrcnn_resnet50_fpn_coco", source.as_uri())
    ours = weights.load_pretrained("maskrcnn_resnet50_fpn_coco", tmp_path / "cache")
    assert list(ours) == ["rpn.head.cls_logits.weight"]
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


# ------------------------------------------------------------------------------------------------ downloads over HTTP
@pytest.fixture
def http_folder(tmp_path):
    """(folder, base URL): a folder served by http.server on 127.0.0.1 for the duration of one test."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # quiet
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_download_right_hash_is_cached_and_loaded(http_folder, tmp_path):
    folder, base = http_folder
    served = saved_with_hash({"w": torch.arange(4.0)}, folder)
    cache = tmp_path / "cache"
    path = weights.download(f"{base}/{served.name}", cache)
    assert path == cache / served.name and path.read_bytes() == served.read_bytes()
    assert torch.equal(load_checked(path)["w"], torch.arange(4.0))
    served.unlink()  # the server no longer has it: a second call must be served from the cache
    assert weights.download(f"{base}/{served.name}", cache) == path
    path.write_bytes(path.read_bytes()[:-1] + b"x")  # the cached copy is re-checked every time
    with pytest.raises(ValueError, match="does not start with"):
        weights.download(f"{base}/{served.name}", cache)


def test_http_download_wrong_hash_or_failure_leaves_nothing(http_folder, tmp_path):
    folder, base = http_folder
    wrong = folder / "model-00000000.pth"
    torch.save({"w": torch.zeros(3)}, wrong)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="does not start with 00000000"):
        weights.download(f"{base}/{wrong.name}", cache)
    assert list(cache.iterdir()) == []
    with pytest.raises(OSError):  # urllib's HTTPError (404) is an OSError
        weights.download(f"{base}/absent-12345678.pth", cache)
    assert list(cache.iterdir()) == []


# ------------------------------------------------------------------------------------- starting from given weights
def fake_state_dict(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Tensors of the given shapes, value k for the k-th key, stored as one element each (expanded views): files of
    a few hundred kilobytes with the exact keys and shapes of torchvision's 170 MB ones."""
    return {name: torch.full((1,) * len(shape), float(k)).expand(shape) if shape else torch.tensor(0)
            for k, (name, shape) in enumerate(shapes.items())}


@pytest.fixture(scope="module")
def coco_like(their_shapes) -> dict[str, torch.Tensor]:
    """torchvision's published COCO file: maskrcnn_resnet50_fpn's keys and shapes, no batch counters."""
    return fake_state_dict({k: v for k, v in their_shapes.items() if not k.endswith("num_batches_tracked")})


@pytest.fixture(scope="module")
def imagenet_like(their_shapes) -> dict[str, torch.Tensor]:
    """torchvision's resnet50 state dict: the body's keys without the prefix, batch counters, the 1000-way fc."""
    prefix = "backbone.body."
    body = {k[len(prefix):]: v for k, v in their_shapes.items() if k.startswith(prefix)}
    return fake_state_dict({**body, "fc.weight": [1000, 2048], "fc.bias": [1000]})


def test_resnet_from_torchvision_fits_the_r50_body(imagenet_like):
    ours = resnet_from_torchvision(imagenet_like)
    body = build_model("r50_fpn", 91).backbone.body.state_dict()
    assert list(ours) == list(body)
    assert all(ours[k].shape == body[k].shape for k in body)
    with pytest.raises(KeyError, match="fpn.inner_blocks"):
        resnet_from_torchvision({"fpn.inner_blocks.0.0.weight": torch.zeros(1)})


def test_coco_weights_with_new_classes_reinitialise_only_the_predictors(coco_like):
    torch.manual_seed(0)
    model = build_model("r50_fpn", 3)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(weights.PREDICTOR_PREFIXES)}
    reinit = load_detector_weights(model, from_torchvision(coco_like), "coco.pth")
    assert sorted(reinit) == sorted(before) and len(reinit) == 8
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # as built, not COCO's 91-class layers
    for name, value in from_torchvision(coco_like).items():
        if not name.startswith(weights.PREDICTOR_PREFIXES):
            assert torch.equal(after[name], value.expand_as(after[name])), name


def test_coco_weights_with_91_classes_load_everything(coco_like):
    model = build_model("r50_fpn", 91)
    assert load_detector_weights(model, from_torchvision(coco_like), "coco.pth") == []
    cls = model.roi_heads.box_predictor.cls_score.weight
    assert torch.equal(cls, coco_like["roi_heads.box_predictor.cls_score.weight"].expand_as(cls))


def test_weights_that_do_not_fit_are_refused_by_name(coco_like, imagenet_like):
    with pytest.raises(ValueError, match=r"coco.pth does not fit .* of another shape .*backbone.body.conv1.weight"):
        load_detector_weights(build_model("tiny", 3), from_torchvision(coco_like), "coco.pth")
    partial = {k: v for k, v in from_torchvision(coco_like).items() if not k.startswith("rpn.")}
    with pytest.raises(ValueError, match=r"missing from the weights \(e.g. rpn.head"):
        load_detector_weights(build_model("r50_fpn", 91), partial, "cut.pth")
    with pytest.raises(ValueError, match="backbone_norm 'frozen_bn' or 'bn'"):
        load_backbone_weights(build_model("r50_fpn", 3, backbone_norm="gn"), resnet_from_torchvision(imagenet_like),
                              "resnet50.pth")


def test_imagenet_backbone_loads_into_frozen_or_trainable_batch_norm(imagenet_like):
    for norm in ("frozen_bn", "bn"):  # a trainable BatchNorm2d has batch counters the file may lack
        model = build_model("r50_fpn", 3, backbone_norm=norm)
        fpn_before = model.backbone.fpn.state_dict()["inner_blocks.0.0.weight"].clone()
        load_backbone_weights(model, resnet_from_torchvision(imagenet_like), "resnet50.pth")
        conv1 = model.backbone.body.conv1.weight
        assert torch.equal(conv1, imagenet_like["conv1.weight"].expand_as(conv1)), norm
        assert torch.equal(model.backbone.fpn.state_dict()["inner_blocks.0.0.weight"], fpn_before)


def test_load_initial_weights_coco_over_http(http_folder, coco_like, tmp_path, monkeypatch):
    folder, base = http_folder
    served = saved_with_hash(coco_like, folder, stem="maskrcnn_resnet50_fpn_coco")
    monkeypatch.setitem(weights.PRETRAINED_URLS, "maskrcnn_resnet50_fpn_coco", f"{base}/{served.name}")
    model = build_model("r50_fpn", 2)
    text = load_initial_weights(model, "coco", tmp_path / "cache")
    assert "re-initialised for 2 classes (the weights have 91)" in text
    assert (tmp_path / "cache" / served.name).is_file()
    assert torch.equal(model.rpn.head.cls_logits.bias, coco_like["rpn.head.cls_logits.bias"].expand(3))


def test_load_initial_weights_imagenet_over_http(http_folder, imagenet_like, tmp_path, monkeypatch):
    folder, base = http_folder
    served = saved_with_hash(imagenet_like, folder, stem="resnet50")
    monkeypatch.setitem(weights.PRETRAINED_URLS, "resnet50_imagenet", f"{base}/{served.name}")
    text = load_initial_weights(build_model("r50_fpn", 2), "imagenet", tmp_path / "cache")
    assert text.startswith("backbone.body from") and "FPN and heads freshly initialised" in text


def test_read_weights_file_kinds(tmp_path, imagenet_like):
    tiny = build_model("tiny", 3)
    torch.save({"model": tiny.state_dict(), "step": 5}, tmp_path / "checkpoint.pt")  # a minimaskrcnn checkpoint
    kind, state_dict = read_weights_file(tmp_path / "checkpoint.pt")
    assert kind == "detector" and set(state_dict) == set(tiny.state_dict())
    model = build_model("tiny", 3)
    assert load_initial_weights(model, str(tmp_path / "checkpoint.pt")).startswith("the whole model from")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), tiny.state_dict().values()))
    torch.save(imagenet_like, tmp_path / "resnet.pth")
    assert read_weights_file(tmp_path / "resnet.pth")[0] == "backbone"
    torch.save({"head.x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth: neither a Mask R-CNN state dict"):
        read_weights_file(tmp_path / "other.pth")
    torch.save({"model": {"w": Payload()}}, tmp_path / "payload.pth")
    with pytest.raises(ValueError, match="payload.pth holds objects other than tensors .*could run code"):
        read_weights_file(tmp_path / "payload.pth")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        read_weights_file(tmp_path / "absent.pth")
