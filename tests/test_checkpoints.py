"""Checkpoint files on their own (minimaskrcnn/checkpoints.py): old formats and foreign files refused, a full disk
leaves the previous checkpoint, the dataset fingerprint sees edited annotations. Checkpoints written by a training
run, resumed and refused on resume: tests/test_engine.py."""
import dataclasses
import errno
import json

import numpy as np
import pytest
import torch

from minimaskrcnn import checkpoints
from minimaskrcnn.engine import TrainConfig


def test_old_format_and_foreign_files_are_refused(tmp_path):
    old = tmp_path / "old.pt"  # what minimaskrcnn wrote before format 2
    torch.save({"model": {}, "step": 3, "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
                "model_info": {"preset": "tiny", "num_classes": 3, "overrides": {}}}, old)
    with pytest.raises(ValueError, match="older version of minimaskrcnn"):
        checkpoints.load_checkpoint(old)
    plain = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, plain)
    with pytest.raises(ValueError, match="format_version: None"):
        checkpoints.model_from_checkpoint(plain)
    text = tmp_path / "notes.pt"
    for content, why in (("not a checkpoint", r" \(Unsupported operand 110\)"), ("", ": the file is empty")):
        text.write_text(content)
        with pytest.raises(ValueError, match=f"^{text} is not a readable checkpoint{why}$"):
            checkpoints.load_checkpoint(text)


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / checkpoints.CHECKPOINT_NAME
    checkpoints.save_checkpoint(path, format_version=checkpoints.FORMAT_VERSION, step=1)

    def full_disk(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="previous checkpoint .* left intact") as err:
        checkpoints.save_checkpoint(path, format_version=checkpoints.FORMAT_VERSION, step=2)
    assert err.value.errno == errno.ENOSPC
    with pytest.raises(OSError, match="no checkpoint was written"):
        checkpoints.save_checkpoint(tmp_path / "new.pt", step=2)
    monkeypatch.undo()
    assert checkpoints.load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoints.CHECKPOINT_NAME]  # no temporary file left


def test_the_dataset_fingerprint_sees_edited_annotations(tmp_path):
    from minimaskrcnn.data import CocoDataset, make_shapes

    annotations = make_shapes(tmp_path / "shapes", 2, image_size=64)
    before = checkpoints.dataset_fingerprint(CocoDataset(annotations.parent / "images", annotations))
    data = json.loads(annotations.read_text())
    data["annotations"][0]["category_id"] = data["annotations"][0]["category_id"] % 4 + 1  # the same images
    annotations.write_text(json.dumps(data))
    after = checkpoints.dataset_fingerprint(CocoDataset(annotations.parent / "images", annotations))
    assert before["image_ids_sha256"] == after["image_ids_sha256"]
    assert len(after["annotations_sha256"]) == 64 and before["annotations_sha256"] != after["annotations_sha256"]
    cfg = TrainConfig(steps=2)
    info = {"config": None, "num_classes": None}
    ckpt = {"step": 1, "train_config": checkpoints.as_lists(dataclasses.asdict(cfg)), "model_info": info,
            "dataset": before}
    with pytest.raises(ValueError, match="dataset.annotations_sha256: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        checkpoints.check_resumable(ckpt, cfg, info, after)
    del ckpt["dataset"]["annotations_sha256"]  # a checkpoint written before annotations were fingerprinted
    checkpoints.check_resumable(ckpt, cfg, info, after)
