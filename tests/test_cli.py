"""CLI: --help, arguments refused before any work, data layouts and checks, nothing of the user's overwritten,
--weights, and a tiny train -> evaluate -> predict run on 64-px shapes images (all in-process through main)."""
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from minimaskrcnn import engine
from minimaskrcnn.__main__ import main, parse_override
from minimaskrcnn.data import make_shapes
from minimaskrcnn.checkpoints import CHECKPOINT_NAME, load_checkpoint
from minimaskrcnn.engine import LOSS_PLOT_NAME
from minimaskrcnn.evaluation import METRIC_NAMES
from minimaskrcnn.model import PRESET_TRAINING, PRESETS, build_model

FAST = ["--steps", "2", "--batch-size", "2", "--warmup-steps", "1", "--log-every", "1", "--no-progress",
        "--override", "min_size=64", "--override", "max_size=64", "--device", "cpu"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A data folder in the folder layout: train/ (4 images) and val/ (2 images) of 64-px shapes."""
    data = tmp_path_factory.mktemp("shapes")
    make_shapes(data / "train", num_images=4, image_size=64, seed=1)
    make_shapes(data / "val", num_images=2, image_size=64, seed=2)
    return data


@pytest.fixture(scope="module")
def run(shapes, tmp_path_factory):
    """A checkpoint of a real 2-step tiny run on `shapes` (train, evaluate at the end, pictures)."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    main(["train", "--data", str(shapes), "--out", str(out), *FAST])
    return out


@pytest.fixture
def training(monkeypatch):
    """engine.train replaced by a recorder: what train would have trained, without training."""
    calls = []

    def record(model, train_set, cfg, out_dir=None, val_set=None, **kwargs):
        calls.append(SimpleNamespace(model=model, train_set=train_set, val_set=val_set, cfg=cfg, out=out_dir))
        return engine.TrainResult(step=0)

    monkeypatch.setattr(engine, "train", record)
    return calls


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def copy_split(shapes, tmp_path, split="val"):
    copy = tmp_path / split
    shutil.copytree(shapes / split, copy)
    return copy / "images", copy / "annotations.json"


# ------------------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["predict"], ["check-data"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(command + ["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: python -m minimaskrcnn" in text
    if command == ["predict"]:
        assert "--annotations" in text and "IMAGE_OR_FOLDER" in text and "--overwrite" in text
    if command == ["train"]:
        assert "--weights" in text and "--train-annotations" in text and "--overwrite" in text


def test_parse_override():
    assert parse_override("anchor_sizes=((4,),(8,))") == ("anchor_sizes", ((4,), (8,)))
    assert parse_override("mask_head_layers=[32, 32]") == ("mask_head_layers", (32, 32))
    assert parse_override("backbone_norm=gn") == ("backbone_norm", "gn")
    assert parse_override("rpn_nms_thresh=1") == ("rpn_nms_thresh", 1)  # an int is a float
    for text, message in [("min_size=abc", "min_size must be int, got 'abc'"), ("min_size=1.5", "must be int"),
                          ("channels_last=1", "must be bool"), ("image_mean=(1, 2)", "image_mean must be"),
                          ("anchor_sizes=(4, 8)", "anchor_sizes must be"), ("nosuch=1", "unknown config field"),
                          ("min_size", "expected KEY=VALUE")]:
        with pytest.raises(Exception, match=message):
            parse_override(text)


@pytest.mark.parametrize("bad, message", [
    (["--checkpoint-every", "0"], "--checkpoint-every: .*must be >= 1, got 0"),
    (["--steps", "-5"], "--steps: .*must be >= 1"),
    (["--lr", "-0.1"], "--lr: .*must be > 0"),
    (["--lr", "nan"], "--lr: .*must be a finite number, got nan"),
    (["--lr", "inf"], "--lr: .*must be a finite number, got inf"),
    (["--weight-decay", "1e999"], "--weight-decay: .*must be a finite number"),
    (["--seed", "-1"], "--seed: .*must be between 0 and 9223372036854775807, got -1"),
    (["--seed", str(2**64)], "--seed: .*must be between 0 and"),
    (["--device", "banana"], "--device: unknown device 'banana'"),
    (["--device", "cuda:99"], "--device: cuda:99: (no CUDA GPU is available|this machine has)"),
    (["--warmup-steps", "-1"], "--warmup-steps: .*must be >= 0"),
    (["--batch-size", "two"], "--batch-size: .*expected an integer"),
    (["--override", "min_size=abc"], "--override: .*min_size must be int"),
    (["--override", "nosuch=1"], "--override: .*unknown config field 'nosuch'"),
    (["--preset", "huge"], "--preset: invalid choice: 'huge'"),
    (["--weights", "nosuch.pth"], "--weights: .*neither"),
    (["--resume", "--overwrite"], "not allowed with argument"),
])
def test_out_of_range_arguments_are_refused_before_any_work(bad, message, tmp_path, monkeypatch, capsys, training):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", "shapes", "--out", "run", *bad])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "python -m minimaskrcnn train: error:" in err and re.search(message, err), err
    assert listing(tmp_path) == [] and training == []  # no shapes generated, no run folder, no training


def test_config_values_and_misfitting_weights_are_refused_before_any_work(tmp_path, monkeypatch, training):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"--override: MaskRCNNConfig: .*backbone_norm='xyz' \(allowed: one of"):
        main(["train", "--data", "shapes", "--override", "backbone_norm=xyz"])
    with pytest.raises(SystemExit, match=r"--override: MaskRCNNConfig: .*min_size=0 \(allowed: an int >= 1\)"):
        main(["train", "--data", "shapes", "--override", "min_size=0"])
    with pytest.raises(SystemExit, match=r"--override: .*rpn_fg_iou_thresh=2.0 \(allowed: a number in \[0, 1\]\)"):
        main(["train", "--data", "shapes", "--override", "rpn_fg_iou_thresh=2.0"])
    with pytest.raises(SystemExit, match="fit --preset r50_fpn .* not --preset tiny"):
        main(["train", "--data", "shapes", "--weights", "coco"])
    with pytest.raises(SystemExit, match="fit --preset r50_fpn .* not --preset r50_fpn with overrides"):
        main(["train", "--data", "shapes", "--preset", "r50_fpn", "--weights", "imagenet",
              "--override", "backbone_norm=gn"])
    with pytest.raises(SystemExit, match="only with --data shapes"):
        main(["train", "--data", "mine", "--num-train", "3"])
    assert listing(tmp_path) == [] and training == []


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_preset_trains_its_model_with_its_recipe(preset, shapes, tmp_path, training):
    """train --preset NAME trains build_model(NAME)'s model (no hidden overrides) on PRESET_TRAINING[NAME]'s
    schedule."""
    main(["train", "--preset", preset, "--data", str(shapes), "--out", str(tmp_path / "run"), "--batch-size", "2"])
    (call,) = training
    recipe = PRESET_TRAINING[preset]
    assert call.model.cfg == build_model(preset, 2).cfg == PRESETS[preset]
    assert (call.cfg.steps, call.cfg.optimizer, call.cfg.lr, call.cfg.weight_decay, call.cfg.warmup_steps,
            call.cfg.eval_every) == (recipe.steps, recipe.optimizer, recipe.lr, recipe.weight_decay,
                                     recipe.warmup_steps, recipe.eval_every)
    assert call.cfg.batch_size == 2  # the command line wins over the recipe


# ------------------------------------------------------------------------------------------------- data and layouts
def test_shapes_are_generated_only_for_data_shapes(tmp_path, monkeypatch, training, capsys):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine" / "train"
    mine.mkdir(parents=True)
    (mine / "photo.jpg").write_bytes(b"not generated by us")
    with pytest.raises(SystemExit, match="train split: no annotation file .*mine/train/annotations.json"):
        main(["train", "--data", "mine", "--out", "run"])
    assert listing(tmp_path / "mine") == ["train", "train/photo.jpg"]  # nothing written into the user's folder
    main(["train", "--data", "shapes", "--out", "run", "--num-train", "3", "--num-val", "2", "--image-size", "64",
          "--batch-size", "3"])
    assert "generated 3 shapes images in data/shapes/train" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "data" / "shapes").iterdir()) == ["train", "val"]  # no temp folders
    assert len(training[0].train_set) == 3 and len(training[0].val_set) == 2
    shutil.rmtree(tmp_path / "data" / "shapes" / "val" / "images")
    (tmp_path / "data" / "shapes" / "val" / "annotations.json").unlink()
    (tmp_path / "data" / "shapes" / "val" / "notes.txt").write_text("someone's")
    with pytest.raises(SystemExit, match="data/shapes/val exists without annotations.json"):
        main(["train", "--data", "shapes", "--out", "run2"])
    assert (tmp_path / "data" / "shapes" / "val" / "notes.txt").read_text() == "someone's"


def test_explicit_split_paths(shapes, tmp_path, training):
    flags = [str(x) for split in ("train", "val")
             for x in (f"--{split}-images", shapes / split / "images", f"--{split}-annotations",
                       shapes / split / "annotations.json")]
    main(["train", *flags, "--out", str(tmp_path / "run")])
    assert len(training[0].train_set) == 4 and len(training[0].val_set) == 2
    with pytest.raises(SystemExit, match="missing --val-images, --val-annotations"):
        main(["train", *flags[:4], "--out", str(tmp_path / "run2")])
    with pytest.raises(SystemExit, match="--data and --train-images are alternatives"):
        main(["train", "--data", str(shapes), *flags[:2], "--out", str(tmp_path / "run2")])
    with pytest.raises(SystemExit, match="no data: give --data"):
        main(["train", "--out", str(tmp_path / "run2")])
    only_train = tmp_path / "only_train"
    shutil.copytree(shapes / "train", only_train / "train")
    with pytest.raises(SystemExit, match="val split: no annotation file"):
        main(["train", "--data", str(only_train), "--out", str(tmp_path / "run2")])
    assert len(training) == 1 and not (tmp_path / "run2").exists()


def test_train_and_val_categories_are_compared_before_training(shapes, tmp_path, training):
    images, annotations = copy_split(shapes, tmp_path)
    data = json.loads(annotations.read_text())
    data["categories"][1]["name"] = "disc"
    data["categories"].append({"id": 9, "name": "hexagon"})
    annotations.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match=r"different categories:\n  category id 2 is 'circle' in .* but 'disc' in "
                                         r".*\n  category id 9 \('hexagon'\) only in .*val/annotations.json"):
        main(["train", "--train-images", str(shapes / "train" / "images"), "--train-annotations",
              str(shapes / "train" / "annotations.json"), "--val-images", str(images), "--val-annotations",
              str(annotations), "--out", str(tmp_path / "run")])
    assert training == []


def test_train_checks_every_image_before_training(shapes, tmp_path, training):
    images, annotations = copy_split(shapes, tmp_path)
    broken = sorted(images.iterdir())[1]
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated PNG
    with pytest.raises(SystemExit, match=f"(?s)the val split .* has 1 problem.*{broken.name}"):
        main(["train", "--train-images", str(shapes / "train" / "images"), "--train-annotations",
              str(shapes / "train" / "annotations.json"), "--val-images", str(images), "--val-annotations",
              str(annotations), "--out", str(tmp_path / "run")])
    assert training == [] and not (tmp_path / "run").exists()


def test_check_data_command(shapes, tmp_path, capsys):
    assert main(["check-data", "--data", str(shapes)]) == 0
    out = capsys.readouterr().out
    assert out.count("OK: ") == 2 and "4 images" in out and "2 images" in out
    images, annotations = copy_split(shapes, tmp_path)
    broken = sorted(images.iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:200])
    assert main(["check-data", "--images", str(images), "--annotations", str(annotations)]) == 1
    out = capsys.readouterr().out
    assert broken.name in out and "1 problem(s)" in out
    with pytest.raises(SystemExit, match="give --data .* or both --images and --annotations"):
        main(["check-data", "--images", str(images)])


# --------------------------------------------------------------------------------------------------- the run folder
def test_a_fresh_train_refuses_a_non_empty_out(shapes, tmp_path, training):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".metrics.jsonl.new").write_text("")  # a run of ours stopped before its first checkpoint: not in the way
    main(["train", "--data", str(shapes), "--out", str(out), "--resume"])
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="is not empty .*notes.txt.*--overwrite"):
        main(["train", "--data", str(shapes), "--out", str(out)])
    with pytest.raises(SystemExit, match="--resume: .* holds notes.txt but no checkpoint.pt"):
        main(["train", "--data", str(shapes), "--out", str(out), "--resume"])
    (out / CHECKPOINT_NAME).write_bytes(b"an old run")
    with pytest.raises(SystemExit, match="already holds a run .*checkpoint.pt.*--resume to continue it, --overwrite"):
        main(["train", "--data", str(shapes), "--out", str(out)])
    assert len(training) == 1 and (out / "notes.txt").read_text() == "mine"
    main(["train", "--data", str(shapes), "--out", str(out), "--overwrite"])
    assert len(training) == 2 and training[1].out == out


# ------------------------------------------------------------------------------------------ train, evaluate, predict
def test_tiny_train_evaluate_predict(run, shapes, tmp_path, capsys):
    for name in (CHECKPOINT_NAME, LOSS_PLOT_NAME, "predictions.png", "eval.json", "metrics.jsonl"):
        assert (run / name).stat().st_size > 0, name
    ckpt = load_checkpoint(run / CHECKPOINT_NAME)
    info = ckpt["model_info"]
    assert ckpt["step"] == 2 and info["overrides"] == {"min_size": 64, "max_size": 64}
    assert info["class_names"] == ["background", "square", "circle", "triangle", "star"]
    assert info["category_ids"] == [0, 1, 2, 3, 4]
    main(["train", "--data", str(shapes), "--out", str(run), "--resume", *FAST])  # what a second `make train` does
    out = capsys.readouterr().out
    assert "trained to step 2" in out and "AP50" in out  # nothing trained again, the finished run re-evaluated
    assert load_checkpoint(run / CHECKPOINT_NAME)["step"] == 2

    main(["evaluate", "--checkpoint", str(run / CHECKPOINT_NAME), "--data", str(shapes), "--device", "cpu",
          "--out", str(tmp_path / "metrics.json")])
    table = capsys.readouterr().out
    assert "bbox" in table and "segm" in table and "AP50" in table
    assert set(json.loads((tmp_path / "metrics.json").read_text())) == {"bbox", "segm"}

    images = sorted((shapes / "val" / "images").iterdir())
    pred = tmp_path / "pred"
    main(["predict", "--checkpoint", str(run / CHECKPOINT_NAME), "--out", str(pred), "--device", "cpu",
          "--score-threshold", "0.0", str(shapes / "val" / "images")])
    assert sorted(p.name for p in pred.glob("*.png")) == sorted(p.stem + ".png" for p in images)
    results = json.loads((pred / "results.json").read_text())
    assert {r["image_id"] for r in results} <= {p.name for p in images}
    for r in results:
        assert len(r["bbox"]) == 4 and isinstance(r["segmentation"]["counts"], str) and r["category_id"] in range(1, 5)

    with pytest.raises(SystemExit, match="output file.* exist already .*--overwrite"):
        main(["predict", "--checkpoint", str(run / CHECKPOINT_NAME), "--out", str(pred), str(images[0])])
    main(["predict", "--checkpoint", str(run / CHECKPOINT_NAME), "--out", str(pred), "--device", "cpu", "--overwrite",
          "--annotations", str(shapes / "val" / "annotations.json"), str(images[0])])
    ids = {im["file_name"].split("/")[-1]: im["id"] for im in
           json.loads((shapes / "val" / "annotations.json").read_text())["images"]}
    assert {r["image_id"] for r in json.loads((pred / "results.json").read_text())} <= {ids[images[0].name]}
    with pytest.raises(SystemExit, match="neither"):
        main(["predict", "--checkpoint", str(run / CHECKPOINT_NAME), "--out", str(pred), str(tmp_path / "nope.png")])


def test_evaluate_refuses_categories_other_than_the_checkpoints(run, shapes, tmp_path):
    images, annotations = copy_split(shapes, tmp_path)
    data = json.loads(annotations.read_text())
    for cat in data["categories"]:
        cat["id"] += 10  # the same names under other ids: the labels would be mapped to the wrong categories
    for ann in data["annotations"]:
        ann["category_id"] += 10
    annotations.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match=r"different categories:\n  category id 1 \('square'\) only in the "
                                         r"checkpoint .*\n.*\n.*\n.*\n  category id 11 \('square'\) only in"):
        main(["evaluate", "--checkpoint", str(run / CHECKPOINT_NAME), "--images", str(images), "--annotations",
              str(annotations), "--device", "cpu"])


def test_predict_never_writes_where_it_reads(run, shapes, tmp_path):
    ckpt = str(run / CHECKPOINT_NAME)
    photos = tmp_path / "photos"
    shutil.copytree(shapes / "val" / "images", photos)
    before = listing(tmp_path)
    first = sorted(photos.iterdir())[0]
    for out, inputs, message in [
        (photos, [str(photos)], "is the folder of inputs"),
        (photos / "pred", [str(photos)], "is in the folder of inputs"),
        (photos, [str(first)], "is the folder of inputs"),
        (tmp_path, [str(photos)], "holds the folder of inputs"),
    ]:
        with pytest.raises(SystemExit, match=message):
            main(["predict", "--checkpoint", ckpt, "--out", str(out), "--overwrite", *inputs])
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(first, other / first.name)
    with pytest.raises(SystemExit, match=f"{first} and {other / first.name} would both write .*{first.stem}.png"):
        main(["predict", "--checkpoint", ckpt, "--out", str(tmp_path / "pred"), str(photos), str(other)])
    assert listing(tmp_path) == sorted(before + ["other", f"other/{first.name}"])


# ---------------------------------------------------------------------------------------------------- initial weights
def test_weights_from_a_checkpoint_with_other_classes(run, shapes, tmp_path, training, capsys):
    images, annotations = copy_split(shapes, tmp_path, "train")
    data = json.loads(annotations.read_text())  # one class: squares only
    data["categories"] = data["categories"][:1]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] == 1]
    annotations.write_text(json.dumps(data))
    val_images, val_annotations = copy_split(shapes, tmp_path, "val")
    val = json.loads(val_annotations.read_text())
    val["categories"] = val["categories"][:1]
    val["annotations"] = [a for a in val["annotations"] if a["category_id"] == 1]
    val_annotations.write_text(json.dumps(val))
    main(["train", "--train-images", str(images), "--train-annotations", str(annotations), "--val-images",
          str(val_images), "--val-annotations", str(val_annotations), "--out", str(tmp_path / "run"),
          "--weights", str(run / CHECKPOINT_NAME), *FAST])
    assert "box and mask predictors re-initialised for 2 classes (the weights have 5)" in capsys.readouterr().out
    model, trained = training[0].model, load_checkpoint(run / CHECKPOINT_NAME)["model"]
    assert torch.equal(model.backbone.body.conv1.weight, trained["backbone.body.conv1.weight"])
    assert model.roi_heads.box_predictor.cls_score.weight.shape[0] == 2


def test_seed_sets_the_initial_weights(shapes, tmp_path, training):
    for seed in (0, 0, 1):
        torch.rand(10)  # whatever ran before moves torch's global generator: the weights must not depend on it
        main(["train", "--data", str(shapes), "--out", str(tmp_path / f"run{len(training)}"), "--seed", str(seed)])
    first = [t.model.backbone.body.conv1.weight for t in training]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])


# ------------------------------------------------------------------------------------ found by trying the user's path
class Payload:
    """Unpickling this writes `marker`: what a malicious checkpoint could do (os.system, ...)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (self.marker, "code ran")


def test_every_command_refuses_a_checkpoint_that_would_run_code(run, shapes, tmp_path, training):
    evil, marker = tmp_path / "evil", tmp_path / "marker"
    shutil.copytree(run, evil)
    ckpt = load_checkpoint(evil / CHECKPOINT_NAME)
    ckpt["model_info"]["note"] = Payload(marker)
    torch.save(ckpt, evil / CHECKPOINT_NAME)
    path = str(evil / CHECKPOINT_NAME)
    for argv in (["evaluate", "--checkpoint", path, "--data", str(shapes)],
                 ["predict", "--checkpoint", path, "--out", str(tmp_path / "pred"), str(shapes / "val" / "images")],
                 ["train", "--data", str(shapes), "--out", str(evil), "--resume", *FAST],
                 ["train", "--data", str(shapes), "--out", str(tmp_path / "new"), "--weights", path, *FAST]):
        with pytest.raises(SystemExit, match=f"python -m minimaskrcnn {argv[0]}: error: .*{evil}.*pathlib"):
            main(argv)
        assert not marker.exists()
    assert training == [] and not (tmp_path / "pred").exists() and not (tmp_path / "new").exists()


def test_a_resume_that_differs_is_refused_before_training(run, shapes, tmp_path, training):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    with pytest.raises(SystemExit, match=r"train: error: --resume: cannot resume .*\n  model.config.min_size: 64 -> 48"):
        main(["train", "--data", str(shapes), "--out", str(out), "--resume", *FAST, "--override", "min_size=48"])
    renamed = tmp_path / "renamed"  # the same images and number of classes, but other classes
    shutil.copytree(shapes, renamed)
    for split in ("train", "val"):
        data = json.loads((renamed / split / "annotations.json").read_text())
        data["categories"][0]["name"] = "box"
        (renamed / split / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit, match=r"model.class_names: \['background', 'square', .* -> \['background', 'box'"):
        main(["train", "--data", str(renamed), "--out", str(out), "--resume", *FAST])
    relabelled = tmp_path / "relabelled"  # the same images and classes, one annotation's class changed
    shutil.copytree(shapes, relabelled)
    data = json.loads((relabelled / "train" / "annotations.json").read_text())
    data["annotations"][0]["category_id"] = data["annotations"][0]["category_id"] % 4 + 1
    (relabelled / "train" / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit, match=r"--resume: cannot resume .*\n  dataset.annotations_sha256: '"):
        main(["train", "--data", str(relabelled), "--out", str(out), "--resume", *FAST])
    assert training == []


def test_a_batch_larger_than_the_training_set_is_refused_before_training(shapes, tmp_path, training):
    with pytest.raises(SystemExit, match="--batch-size 5 is more than the 4 training images .* lower it"):
        main(["train", "--data", str(shapes), "--out", str(tmp_path / "run"), *FAST, "--batch-size", "5"])
    assert training == []


def test_evaluate_out_never_replaces_an_input_or_an_existing_file(run, shapes, tmp_path, monkeypatch):
    images, annotations = copy_split(shapes, tmp_path)
    before = annotations.read_text()
    ckpt = run / CHECKPOINT_NAME
    evaluate = ["evaluate", "--checkpoint", str(ckpt), "--images", str(images), "--annotations", str(annotations)]
    for out, message in [(annotations, "is one of the inputs"), (ckpt, "is one of the inputs"),
                         (tmp_path, "is a folder")]:
        with pytest.raises(SystemExit, match=f"evaluate: error: --out {out} {message}"):
            main([*evaluate, "--out", str(out), "--overwrite"])
    mine = tmp_path / "mine.json"
    mine.write_text("the user's")
    with pytest.raises(SystemExit, match=f"--out {mine} exists already; pass --overwrite"):
        main([*evaluate, "--out", str(mine)])
    assert annotations.read_text() == before and mine.read_text() == "the user's"
    calls, metrics = [], {"bbox": {**dict.fromkeys(METRIC_NAMES, 0.5), "per_class": {}}}
    monkeypatch.setattr(engine, "evaluate", lambda *args, **kwargs: calls.append(kwargs) or metrics)
    main([*evaluate, "--out", str(mine), "--overwrite", "--device", "cpu"])
    assert json.loads(mine.read_text()) == metrics
    assert calls[0]["category_ids"] == load_checkpoint(ckpt)["model_info"]["category_ids"]  # the checkpoint's labels


def test_unreadable_checkpoints_and_predict_inputs_are_command_errors(run, shapes, tmp_path):
    images = str(shapes / "val" / "images")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for checkpoint, message in [(empty, "the file is empty"), (tmp_path / "nope.pt", "no checkpoint at")]:
        with pytest.raises(SystemExit, match=f"evaluate: error: --checkpoint: .*{message}"):
            main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(shapes)])
        with pytest.raises(SystemExit, match=f"predict: error: --checkpoint: .*{message}"):
            main(["predict", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "pred"), images])
    a_file = tmp_path / "notes.txt"
    a_file.write_text("the user's")
    with pytest.raises(SystemExit, match=f"predict: error: --out {a_file} is a file, not a folder"):
        main(["predict", "--checkpoint", str(run / CHECKPOINT_NAME), "--out", str(a_file), images])
    with pytest.raises(SystemExit, match="predict: error: --annotations .*nope.json: not a COCO file"):
        main(["predict", "--checkpoint", str(run / CHECKPOINT_NAME), "--out", str(tmp_path / "pred"), images,
              "--annotations", str(tmp_path / "nope.json")])
    assert a_file.read_text() == "the user's" and not (tmp_path / "pred").exists()


def test_predict_names_an_unreadable_image_and_still_predicts_the_others(run, shapes, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(shapes / "val" / "images", photos)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    with pytest.raises(SystemExit, match=r"predict: error: 1 image\(s\) could not be read and were skipped:\n  "
                                         f".*{photos / 'broken.jpg'}: cannot read the image"):
        main(["predict", "--checkpoint", str(run / CHECKPOINT_NAME), "--out", str(tmp_path / "pred"), "--device",
              "cpu", str(photos)])
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["000000.png", "000001.png", "results.json"]
