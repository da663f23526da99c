"""`genlab evaluate` and `genlab compare` on tiny real runs: report layout, reproducibility,
the HTML page and its figures, errors."""

import base64
import io
import json
from html.parser import HTMLParser

import pytest
from PIL import Image

from genlab.cli import main
from genlab.engine.device import cpu_model
from tests.conftest import TINY_VAE, main_fails_in_one_line, run_cli
from tests.test_gan import SMALL

REPORT_KEYS = {"value", "extractor", "n", "seed", "seconds"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    base = tmp_path_factory.mktemp("eval")
    gan, cvae = base / "gan", base / "cvae"
    r = run_cli("train", "gan-mlp-mnist", "--steps", "30", "--out", str(gan), "--data-root", str(data_root),
                "--set", *SMALL)
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "cvae-mnist", "--steps", "20", "--out", str(cvae), "--data-root", str(data_root),
                "--set", *TINY_VAE)
    assert r.returncode == 0, r.stderr
    return gan, cvae


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.alts, self.tables = [], [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
            self.alts.append(dict(attrs).get("alt", ""))
        self.tables += tag == "table"


def _check_html(page):
    """The page's figure captions (img alt); every figure is embedded (one mailable file)."""
    p = _Images()
    p.feed(page.read_text())
    assert p.tables == 1 and p.srcs
    for src in p.srcs:
        assert src.startswith("data:image/png;base64,"), src[:80]
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        img.load()  # decodes: the figure is a real PNG
        assert img.format == "PNG" and min(img.size) > 20
    assert not list(page.parent.glob("*_files"))  # no side folder
    return p.alts


def test_evaluate_gan_report_layout_and_reproducibility(runs, tmp_path):
    gan, _ = runs
    r = run_cli("evaluate", str(gan), "--n", "600", "--seed", "3")
    assert r.returncode == 0, r.stderr
    rep = json.loads((gan / "report.json").read_text())
    assert rep["run"] == str(gan) and rep["step"] == 30 and rep["model"] == "gan-mlp-mnist"
    assert rep["machine"].startswith(cpu_model())
    m = rep["metrics"]
    assert {"fid", "kid", "precision", "recall", "inception_score", "class_coverage"} <= set(m)
    for name in ("fid", "kid", "precision", "recall"):
        assert REPORT_KEYS <= set(m[name]) and m[name]["extractor"] == "lenet-mnist"
        assert m[name]["n"] == 600 and m[name]["seed"] == 3
    assert 0 <= m["precision"]["value"] <= 1 and 0 <= m["recall"]["value"] <= 1
    assert m["fid"]["value"] > 0
    assert "fid (lenet-mnist)" in r.stdout  # the extractor is named wherever the number appears
    srcs = _check_html(gan / "report.html")
    assert any(s.startswith("samples (seed") for s in srcs) and "training losses" in srcs
    # the same seed gives the same numbers; another seed other samples
    assert main(["evaluate", str(gan), "--n", "600", "--seed", "3", "--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())["metrics"]
    # (the first evaluation ran in a subprocess, this one in-process: with another torch thread
    # count a float64 matrix product may differ in its last bit, so equal to 1e-12, not bitwise)
    assert set(again) == set(m)
    assert all(again[k]["value"] == pytest.approx(m[k]["value"], rel=1e-12, abs=1e-12) for k in again)
    assert main(["evaluate", str(gan), "--n", "600", "--seed", "4", "--metrics", "fid",
                 "--out", str(tmp_path / "other.json"), "--no-html"]) == 0
    other = json.loads((tmp_path / "other.json").read_text())["metrics"]
    assert set(other) == {"fid"} and other["fid"]["value"] != m["fid"]["value"]
    assert not (tmp_path / "other.html").exists()


def test_evaluate_vae_has_reconstruction_likelihood_and_label_accuracy(runs):
    _, cvae = runs
    before = json.loads((cvae / "report.json").read_text())["metrics"]  # test losses from training
    assert main(["evaluate", str(cvae), "--n", "500", "--iw-k", "5"]) == 0
    m = json.loads((cvae / "report.json").read_text())["metrics"]
    assert set(before) <= set(m)  # training's test losses are kept
    for name in ("label_accuracy", "psnr", "ssim", "mse", "nll_nats", "bits_per_dim", "fid"):
        assert name in m, name
    assert m["nll_nats"]["k"] == 5 and m["nll_nats"]["extractor"] is None
    assert m["bits_per_dim"]["value"] == pytest.approx(m["nll_nats"]["value"] / (784 * 0.6931471805599453))
    assert 0 <= m["label_accuracy"]["value"] <= 1 and len(m["label_accuracy"]["per_class"]) == 10
    assert 0 < m["ssim"]["value"] < 1 and m["psnr"]["value"] > 5
    srcs = _check_html(cvae / "report.html")
    assert any("reconstructions" in s for s in srcs)


def test_compare_table(runs, tmp_path):
    gan, cvae = runs
    for run in runs:
        report = run / "report.json"  # written by the evaluate tests when they ran first on this worker
        if not report.exists() or "fid" not in json.loads(report.read_text())["metrics"]:
            assert main(["evaluate", str(run), "--n", "300", "--metrics", "fid"]) == 0
    r = run_cli("compare", str(gan), str(cvae), "--out", str(tmp_path / "cmp.html"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header = lines[0]
    assert "fid (lenet-mnist)" in header and "throughput" in header
    assert lines[2].startswith(str(gan)) and lines[3].startswith(str(cvae))
    assert "gan-mlp-mnist" in lines[2] and "images/s" in lines[2]
    assert "<table>" in (tmp_path / "cmp.html").read_text()


def test_evaluate_errors(runs, tmp_path, capsys):
    gan, _ = runs

    def one_error_line(args, *fragments):
        main_fails_in_one_line(capsys, args, *fragments)

    one_error_line(["evaluate", str(gan), "--extractor", "inception", "--inception-weights", str(tmp_path / "x.pth")],
                   "Inception weights not found", "--inception-weights")
    one_error_line(["evaluate", str(gan), "--metrics", "psnr"], "cannot compute psnr")
    one_error_line(["evaluate", str(gan), "--metrics", "fidd"], "unknown image metric", "fid")
    one_error_line(["evaluate", str(gan), "--extractor", "vgg"], "unknown feature extractor")
    one_error_line(["evaluate", str(tmp_path / "nowhere")], "not found")
    one_error_line(["compare", str(gan), str(tmp_path)], "not a genlab run directory")
