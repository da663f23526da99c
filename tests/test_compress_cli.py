"""`genlab compress`, `genlab export` and `genlab sample --backend onnxruntime` from the command
line: new runs that every command reads, and refusals in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

import genlab
from genlab.cli import main
from tests.conftest import TINY_VAE, main_fails_in_one_line, shakespeare_corpus
from tests.test_text import TINY_TEXT

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    base = tmp_path_factory.mktemp("compress-cli")
    corpus = shakespeare_corpus(base)
    gpt = genlab.train("gpt-shakespeare-cpu", base / "gpt", overrides=TINY_TEXT + [f"data.path={corpus}"], steps=2)
    vae = genlab.train("cvae-mnist", base / "cvae", overrides=TINY_VAE, steps=2, data_root=str(data_root))
    return {"base": base, "gpt": gpt.run_dir, "cvae": vae.run_dir}


def test_quantized_run_is_smaller_samples_and_refuses_training(runs, capsys):
    out = runs["base"] / "gpt-int8"
    assert main(["compress", str(runs["gpt"]), "--method", "quantize", "--dtype", "int8", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    record = json.loads((out / "compression.json").read_text())
    assert record["method"] == "quantize" and record["source"]["run"] == str(runs["gpt"].resolve())
    float_bytes = sum(4 * p.numel() for p in genlab.load(runs["gpt"]).model.parameters())  # fp32 weights
    (int8_file,) = (out / "checkpoints").glob("*.safetensors")
    assert int8_file.stat().st_size < float_bytes  # (the ratio on a real GPT: benchmarks/compression.py)
    assert main(["sample", str(out), "--prompt", "RO", "--max-tokens", "20", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("RO")
    config = (out / "config.yaml").read_bytes()
    main_fails_in_one_line(capsys, ["train", "--resume", str(out), "--steps", "10"], "quantised weights",
                           "quantise again")
    assert (out / "config.yaml").read_bytes() == config  # refused before the folder is touched


def test_compress_options_are_checked_in_one_line(runs, capsys):
    out = runs["base"] / "never"
    main_fails_in_one_line(capsys, ["compress", str(runs["cvae"]), "--method", "quantize", "--amount", "0.5",
                                    "--out", str(out)], "does not take amount")
    main_fails_in_one_line(capsys, ["compress", str(runs["cvae"]), "--method", "prune", "--out", str(runs["gpt"])],
                           str(runs["gpt"]))
    assert not out.exists()


def test_pruned_run_reaches_its_sparsity_and_reads_everywhere(runs, capsys):
    out = runs["base"] / "cvae-pruned"
    assert main(["compress", str(runs["cvae"]), "--method", "prune", "--amount", "0.4", "--out", str(out)]) == 0
    model = genlab.load(out).model
    weights = [m.weight for m in model.modules() if hasattr(m, "weight") and m.weight is not None
               and m.weight.dim() > 1]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.4, abs=0.02)
    assert main(["info", str(out)]) == 0 and "cvae-mnist" in capsys.readouterr().out
    assert main(["sample", str(out), "--n", "10", "--out", str(runs["base"] / "p.npz")]) == 0


def test_export_then_sample_through_onnxruntime_equals_torch(runs, capsys):
    vae = runs["cvae"]
    assert main(["export", str(vae)]) == 0
    assert capsys.readouterr().out.strip() == str(vae / "export" / "model.onnx")
    torch_out, onnx_out = runs["base"] / "t.npz", runs["base"] / "o.npz"
    assert main(["sample", str(vae), "--n", "20", "--out", str(torch_out)]) == 0
    assert main(["sample", str(vae), "--n", "20", "--backend", "onnxruntime", "--out", str(onnx_out)]) == 0
    a, b = np.load(torch_out)["images"].astype(int), np.load(onnx_out)["images"].astype(int)
    assert np.abs(a - b).max() <= 1
    main_fails_in_one_line(capsys, ["export", str(vae), "--out", str(runs["base"] / "m.txt")], ".onnx")
    main_fails_in_one_line(capsys, ["export", "demo:cvae-mnist"], "read-only", "--out")


def test_distilled_student_is_a_smaller_gpt_run(runs, capsys):
    out = runs["base"] / "student"
    assert main(["compress", str(runs["gpt"]), "--method", "distill", "--n-embd", "8", "--steps", "4",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    record = json.loads((out / "compression.json").read_text())
    assert record["method"] == "distill" and record["student"]["params"] < record["teacher"]["params"]
    assert genlab.load(out).cfg.model.n_embd == 8
    assert main(["sample", str(out), "--prompt", "RO", "--max-tokens", "10"]) == 0
    assert capsys.readouterr().out.startswith("RO")
