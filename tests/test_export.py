"""export.py on real runs of three backbone families: what it writes, loaded again by its own runtime and fed as
the model card says, gives the run's stored test probabilities; what it cannot export it refuses clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import assert_clean_error, run_inline

pytestmark = pytest.mark.slow  # every test reads a trained run


def card_inputs(card: dict, data: Path, run: Path) -> np.ndarray:
    """The run's test images, prepared as the model card says (independently of the tool's loaders)."""
    table = pd.read_csv(run / "split.csv", dtype={"sample": str})
    height, width = card["input"]["size"]
    mean, std = np.array(card["input"]["mean"]), np.array(card["input"]["std"])
    images = []
    for sample in table.loc[table["split"] == "test", "sample"]:
        image = Image.open(data / sample).convert("RGB").resize((width, height), Image.BILINEAR)
        images.append(((np.asarray(image) / 255.0 - mean) / std).transpose(2, 0, 1))
    return np.stack(images).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def run_exported(card: dict, folder: Path, inputs: np.ndarray) -> np.ndarray:
    path = folder / card["file"]
    if card["format"] == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {"images": inputs[i : i + 5]})[0] for i in range(0, len(inputs), 5)])
    if card["format"] == "torchscript":
        return torch.jit.load(str(path))(torch.from_numpy(inputs)).detach().numpy()
    from safetensors.torch import load_file

    from backbones.models import create_model

    model = create_model(card["backbone"], len(card["classes"]), "none")
    model.load_state_dict(load_file(str(path)))
    return model.eval()(torch.from_numpy(inputs)).detach().numpy()


@pytest.mark.parametrize(
    "backbone,fmt",
    [(b, f) for b in ("mobilenet_v3_large", "swin_t", "wavemix") for f in ("onnx", "torchscript")]
    + [("swin_t", "safetensors")],
)
def test_the_export_reproduces_the_runs_test_probabilities(folder_runs, tmp_path, backbone, fmt):
    data, runs = folder_runs
    run, out = runs[backbone], tmp_path / "model"
    result = run_inline("export.py", "--run", run, "--format", fmt, "--out", out)
    assert result.returncode == 0, result.stderr
    card = json.loads((out / "model.json").read_text())
    record = json.loads((run / "metrics.json").read_text())
    stored = np.load(run / "test_outputs.npz")
    assert card["verification"]["passed"] and card["verification"]["images"] == len(stored["labels"])
    assert card["classes"] == record["classes"] and card["test"]["top1"] == record["top1"]
    assert card["input"]["size"] == record["image_size"] and card["temperature"] == record["temperature"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", "model.json", card["file"]])
    found = softmax(run_exported(card, out, card_inputs(card, data, run)).astype(np.float64))
    expected = softmax(stored["logits"].astype(np.float64))
    assert np.array_equal(found.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-4)
    assert f"{card['verification']['images']} test images" in (out / "README.md").read_text()


def test_onnx_takes_any_batch_size(folder_runs, tmp_path):
    import onnxruntime

    _, runs = folder_runs
    out = tmp_path / "model"
    assert run_inline("export.py", "--run", runs["mobilenet_v3_large"], "--out", out).returncode == 0
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        assert session.run(None, {"images": np.zeros((batch, 3, 32, 32), np.float32)})[0].shape == (batch, 3)


def test_an_operator_that_does_not_export_is_refused_and_nothing_is_left(folder_runs, tmp_path, monkeypatch):
    """The exporter's own error for an operator it cannot express, raised inside the real export path."""
    from backbones import export

    def unsupported(model, example, path):
        raise torch.onnx.errors.UnsupportedOperatorError("aten::fft_rfft2", 18, None)

    monkeypatch.setitem(export.WRITERS, "onnx", unsupported)
    _, runs = folder_runs
    out = tmp_path / "model"
    assert_clean_error(
        run_inline("export.py", "--run", runs["mobilenet_v3_large"], "--out", out),
        "mobilenet_v3_large cannot be exported as onnx",
        "aten::fft_rfft2",
        "Try another --format",
    )
    assert not out.exists() and not list(tmp_path.glob(".model*"))


def test_an_existing_folder_is_never_overwritten(folder_runs, tmp_path):
    _, runs = folder_runs
    out = tmp_path / "model"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert_clean_error(run_inline("export.py", "--run", runs["mobilenet_v3_large"], "--out", out), "already exists")
    assert (out / "mine.txt").read_text() == "keep"
