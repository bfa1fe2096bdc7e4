"""CLI: --help of each command, and a tiny train -> evaluate -> predict run on generated shapes data."""
import json

import pytest
import torch

import minimaskrcnn.model
from minimaskrcnn.__main__ import main, parse_override
from minimaskrcnn.engine import CHECKPOINT_NAME, LOSS_PLOT_NAME, load_checkpoint


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["predict"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(command + ["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: python -m minimaskrcnn" in text
    if command == ["predict"]:
        assert "--annotations" in text and "IMAGE_OR_FOLDER" in text


def test_parse_override():
    assert parse_override("anchor_sizes=((4,),(8,))") == ("anchor_sizes", ((4,), (8,)))
    assert parse_override("backbone_norm=gn") == ("backbone_norm", "gn")


def test_tiny_train_evaluate_predict(tmp_path, capsys):
    data, run, pred = tmp_path / "shapes", tmp_path / "run", tmp_path / "pred"
    main(["train", "--data", str(data), "--out", str(run), "--steps", "3", "--batch-size", "2", "--num-train", "4",
          "--num-val", "2", "--image-size", "64", "--warmup-steps", "1", "--log-every", "1", "--no-progress",
          "--override", "min_size=64", "--override", "max_size=64", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "generated 4 shapes images" in out and "segm" in out and "AP50" in out
    for name in (CHECKPOINT_NAME, LOSS_PLOT_NAME, "predictions.png", "eval.json", "metrics.jsonl"):
        assert (run / name).stat().st_size > 0, name
    ckpt = load_checkpoint(run / CHECKPOINT_NAME)
    assert ckpt["step"] == 3 and ckpt["model_info"]["overrides"].items() >= {"min_size": 64, "max_size": 64}.items()

    main(["evaluate", "--checkpoint", str(run / CHECKPOINT_NAME), "--data", str(data), "--device", "cpu",
          "--out", str(tmp_path / "metrics.json")])
    table = capsys.readouterr().out
    assert "bbox" in table and "segm" in table and "AP50" in table
    assert set(json.loads((tmp_path / "metrics.json").read_text())) == {"bbox", "segm"}

    images = sorted((data / "val" / "images").iterdir())
    main(["predict", "--checkpoint", str(run / CHECKPOINT_NAME), "--out", str(pred), "--device", "cpu",
          "--score-threshold", "0.0", str(data / "val" / "images")])
    assert sorted(p.name for p in pred.glob("*.png")) == sorted(p.stem + ".png" for p in images)
    results = json.loads((pred / "results.json").read_text())
    assert {r["image_id"] for r in results} <= {p.name for p in images}
    for r in results:
        assert len(r["bbox"]) == 4 and isinstance(r["segmentation"]["counts"], str)

    main(["predict", "--checkpoint", str(run / CHECKPOINT_NAME), "--out", str(pred), "--device", "cpu",
          "--annotations", str(data / "val" / "annotations.json"), str(images[0])])
    ids = {im["file_name"].split("/")[-1]: im["id"] for im in
           json.loads((data / "val" / "annotations.json").read_text())["images"]}
    assert {r["image_id"] for r in json.loads((pred / "results.json").read_text())} <= {ids[images[0].name]}
    with pytest.raises(SystemExit, match="neither"):
        main(["predict", "--checkpoint", str(run / CHECKPOINT_NAME), "--out", str(pred), str(tmp_path / "nope.png")])


def test_seed_sets_the_initial_weights(tmp_path, monkeypatch):
    class Built(Exception):
        """Raised right after the model is built: the test needs its initial weights, not a training run."""

    build_model, first_weights = minimaskrcnn.model.build_model, []

    def build_and_stop(*args, **kwargs):
        first_weights.append(build_model(*args, **kwargs).backbone.body.conv1.weight.detach().clone())
        raise Built

    monkeypatch.setattr(minimaskrcnn.model, "build_model", build_and_stop)
    for seed in (0, 0, 1):
        torch.rand(10)  # whatever ran before moves torch's global generator: the weights must not depend on it
        with pytest.raises(Built):
            main(["train", "--data", str(tmp_path / "shapes"), "--out", str(tmp_path / "run"), "--seed", str(seed),
                  "--num-train", "2", "--num-val", "1", "--image-size", "64", "--device", "cpu", "--no-progress"])
    assert torch.equal(first_weights[0], first_weights[1]) and not torch.equal(first_weights[0], first_weights[2])
