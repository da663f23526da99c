"""Reports people read: the self-contained report.html (fresh after training and resuming),
the metric catalog (what each metric measures, which way is better), `genlab info`'s summary
and `genlab compare`'s table and page. Tiny runs on the 8x8 digits."""

from __future__ import annotations

import base64
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

import genlab
from genlab.errors import ConfigError
from genlab.metrics import catalog
from tests.conftest import shakespeare_corpus
from tests.test_text import TINY_TEXT

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["train.test_batches=2", "data.dataset=digits", "model.arch=mlp", "model.hidden=32", "model.latent_dim=4", "train.batch_size=32",
        "train.log_every=1", "train.eval_every=1000", "train.sample_every=1000", "train.ckpt_every=1000",
        "train.eval_batches=1"]


class _Page(HTMLParser):
    """Every URL a page refers to (img/audio src, link/a href, ...), img alt texts, text."""

    def __init__(self):
        super().__init__()
        self.urls, self.alts, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.urls += [a[k] for k in ("src", "href") if a.get(k)]
        if tag == "img":
            self.alts.append(a.get("alt", ""))

    def handle_data(self, data):
        self.text.append(data)


def read_page(path: Path) -> _Page:
    """The page, checked self-contained: every URL is a data URI, every image a real PNG."""
    p = _Page()
    p.feed(path.read_text())
    for url in p.urls:
        assert url.startswith("data:"), f"{path.name} refers to {url[:80]}"
        if url.startswith("data:image/png;base64,"):
            img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
            assert img.format == "PNG"
            img.load()  # decodes
    return p


@pytest.fixture(scope="module")
def cvae(tmp_path_factory):
    """A cvae run trained 2 steps (its report.html kept as first.html), then resumed to 4."""
    run = tmp_path_factory.mktemp("reports") / "cvae"
    genlab.train("cvae-mnist", run, overrides=TINY, steps=2)
    shutil.copy(run / "report.html", run.parent / "first.html")
    genlab.train(resume=run, steps=4)
    return run


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    base = tmp_path_factory.mktemp("reports-text")
    corpus = shakespeare_corpus(base)
    sets = TINY_TEXT + [f"data.path={corpus}", "train.log_every=1"]
    return genlab.train("gpt-shakespeare-cpu", base / "gpt", overrides=sets, steps=2).run_dir


# ------------------------------------------------------------------------- report.html


def test_training_writes_a_fresh_self_contained_report_html(cvae):
    first = " ".join(read_page(cvae.parent / "first.html").text)
    assert "step 2," in first
    p = read_page(cvae / "report.html")
    text = " ".join(p.text)
    assert json.loads((cvae / "report.json").read_text())["step"] == 4
    assert "step 4," in text and "step 2," not in text  # the resumed run's page, not the first one's
    assert "test_loss" in text and "what it measures" in text and "↓" in text
    assert any("final.png" in a for a in p.alts) and "training losses" in p.alts
    assert not list(cvae.glob("*_files"))


def test_a_text_runs_training_page_shows_its_last_continuation(gpt):
    p = read_page(gpt / "report.html")
    text = " ".join(p.text)
    assert "val_loss" in text and "Sample text" in text and p.alts == ["training losses"]
    assert (gpt / "samples" / "final.txt").read_text(encoding="utf-8")[:20] in text


def test_evaluate_page_is_self_contained_and_tidies_the_old_side_folder(cvae, tmp_path):
    from genlab.evaluation import evaluate

    run = tmp_path / "run"
    shutil.copytree(cvae, run)
    old = run / "report_files"
    old.mkdir()
    (old / "0-samples--seed-0-.png").write_bytes(b"old")  # what earlier genlab versions wrote there
    (old / "notes.txt").write_text("mine")
    rep = evaluate(run, n=60, metrics=["fid", "precision", "recall", "label_accuracy", "psnr"], seed=0)
    assert {"fid", "label_accuracy", "psnr"} <= set(rep["metrics"])
    p = read_page(run / "report.html")
    text = " ".join(p.text)
    for name in rep["metrics"]:
        assert catalog.describe(name)[0] in text
    assert any(a.startswith("samples (seed") for a in p.alts) and "training losses" in p.alts
    assert not (old / "0-samples--seed-0-.png").exists() and (old / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------- the catalog


def _evaluator_metric_names() -> set[str]:
    """Every name an evaluator can write into report.json, from the evaluators' own lists."""
    from genlab.evaluation import audio, graphs, images, privacy, text

    names = {*images.SAMPLE_METRICS, *images.RECON_METRICS, *images.LIKELIHOOD_METRICS, *images.TSTR_METRICS,
             *text.METRICS, *graphs.LINK_METRICS, *graphs.GEN_METRICS, *audio.AUDIO_METRICS}
    fake_audit = {"membership": {"attacks": {a: {"auc": 0.5, **{f"tpr_at_fpr_{f:g}": 0.0 for f in privacy.FPRS}}
                                             for a in ("loss", "calibrated", "distance")}},
                  "memorisation": {"spaces": {"pixel": {"near_copies": 0.0}, "lenet-mnist": {"near_copies": 0.0}}}}
    return names | set(privacy.headline_figures(fake_audit))


def test_catalog_describes_every_metric_genlab_reports(cvae, gpt):
    names = _evaluator_metric_names()
    for run in (cvae, gpt):  # the trainer's test report: split-prefixed loss terms
        names |= set(json.loads((run / "report.json").read_text())["metrics"])
    names |= {f"test_{t}" for t in ("loss", "recon", "kl", "neg_elbo", "mse", "nll", "bits_per_dim",
                                    "nll_per_graph", "bits_per_sample")}
    missing = sorted(n for n in names if not catalog.known(n))
    assert not missing, f"add these to genlab/metrics/catalog.py: {missing}"
    for n in names:
        text, better = catalog.describe(n)
        assert text and better in ("lower", "higher", None), n


def test_catalog_directions():
    d = catalog.describe
    assert d("fid")[1] == "lower" and d("precision")[1] == "higher" and d("psnr")[1] == "higher"
    assert d("test_kl")[1] == "lower" and "test split" in d("test_kl")[0]
    assert d("val_auc")[1] == "higher"  # a metric on a split, not a loss term
    assert d("test_some_new_term") == ("the model's some_new_term loss term, on the test split", "lower")
    assert not catalog.known("test_some_new_term")
    assert d("mia_calibrated_auc")[1] == "lower" and "calibrated" in d("mia_calibrated_tpr_at_fpr_0.01")[0]
    assert d("near_copies_pixel")[1] == "lower"
    assert d("no_such_metric") == ("", None) and catalog.arrow("bleu") == "↑"


# ------------------------------------------------------------------------- genlab info


def test_summary_of_a_trained_run(cvae):
    from genlab.evaluation.summary import summary_text

    s = summary_text(cvae)
    lines = s.splitlines()
    assert 5 <= len(lines) <= 15, s
    assert lines[0] != "" and not lines[0].startswith("epsilon")
    assert "cvae-mnist (vae, image)" in s and "parameters" in s
    assert "step 4 of 4" in s and "finished (steps)" in s
    assert "digits" in s and "training examples" in s and "torch" in s
    value = json.loads((cvae / "report.json").read_text())["metrics"]["test_loss"]["value"]
    assert any(ln.split()[:2] == ["test_loss", f"{value:.4g}"] and ln.endswith("↓") for ln in lines), s
    assert "samples/final.png" in s and "report.html" in s and "logs/train.jsonl" in s


def test_summary_survives_damaged_and_missing_files(cvae, tmp_path):
    from genlab.evaluation.summary import summary_text

    run = tmp_path / "run"
    shutil.copytree(cvae, run)
    (run / "report.json").write_text("{not json")
    (run / "manifest.json").unlink()
    s = summary_text(run)
    assert f"damaged:  {run / 'report.json'} is not valid JSON" in s and "step 4 of 4" in s
    assert "machine:  unknown (no manifest.json)" in s and "metrics" not in s
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(cvae / "config.yaml", fresh / "config.yaml")
    s = summary_text(fresh)
    assert "not trained yet" in s and "metrics:  none yet" in s


def test_summary_of_a_private_run_starts_with_epsilon(tmp_path):
    from genlab.evaluation.summary import summary_text

    out = tmp_path / "dp"
    genlab.train("cvae-mnist", out, overrides=TINY + ["privacy.epsilon=8"], steps=2)
    first = summary_text(out).splitlines()[0]
    assert first.startswith("epsilon: ") and "(delta 1e-05)" in first
    assert 7.5 <= float(first.split()[1]) <= 8.0


def test_run_record_is_the_full_record(cvae):
    from genlab.evaluation.summary import run_record

    r = run_record(cvae)
    assert set(r) == {"run", "config", "manifest", "report", "progress", "last_val"}
    assert r["progress"]["step"] == 4 and r["report"]["step"] == 4 and r["config"]["preset"] == "cvae-mnist"
    json.dumps(r)  # printable as JSON


# ------------------------------------------------------------------------- genlab compare


def test_compare_chooses_key_columns_with_directions(cvae, gpt):
    from genlab.evaluation.compare import collect, format_table

    header, rows = collect([cvae, gpt])
    assert header == ["run", "model", "step", "train min", "throughput", "test_loss ↓", "val_loss ↓"]
    assert rows[0][:3] == [str(cvae), "cvae-mnist", 4] and rows[0][6] is None and rows[1][5] is None
    assert isinstance(rows[1][6], float)
    assert "test_loss ↓" in format_table(header, rows).splitlines()[0]
    header, rows = collect([cvae], metrics=["test_kl", "test_recon"])
    assert header[5:] == ["test_kl ↓", "test_recon ↓"] and len(rows[0]) == 7
    with pytest.raises(ConfigError, match="no run has metric.s. fidd; the runs have test_loss, test_recon"):
        collect([cvae, gpt], metrics=["fidd"])


def test_compare_page_shows_each_runs_samples_and_curves(cvae, gpt, tmp_path):
    from genlab.evaluation.compare import collect, write_compare_html

    header, rows = collect([cvae, gpt])
    out = write_compare_html(header, rows, tmp_path / "cmp.html", [cvae, gpt])
    p = read_page(out)
    assert p.alts == ["samples/final.png", "training losses", "training losses"]  # gpt samples are text
    assert "test_loss ↓" in " ".join(p.text)
