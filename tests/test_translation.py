"""Image-to-image translation: paired/unpaired data, pix2pix and CycleGAN, `apply translate`,
their evaluation. Tiny models on tiny folders (16x16 RGB pairs, 8x8 grey domains)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import genlab
from genlab.apply import apply
from genlab.config import DATASETS, PAIRED_DATASETS, TRANSLATION_DATASETS, DataConfig, resolve
from genlab.data import paired
from genlab.data.paired import PairedData, edge_map, read_paired_folder
from genlab.data.transforms import BatchPipeline
from genlab.errors import ConfigError, DataError, ShapeError
from genlab.models.translation import (
    CycleGAN,
    CycleGANConfig,
    Pix2Pix,
    Pix2PixConfig,
    patchgan_layers,
    receptive_field,
)
from tests.conftest import assert_same_tensors, main_fails_in_one_line, weights_of

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["train.test_batches=2", "train.batch_size=4", "train.log_every=1", "train.sample_every=1000", "train.ckpt_every=1000",
        "data.val_size=4", "data.test_size=4"]
TINY_PIX2PIX = ["model.base_channels=4", "model.d_channels=4", "model.depth=2", "model.n_layers=1"] + TINY
TINY_CYCLEGAN = ["model.g_channels=4", "model.n_blocks=1", "model.d_channels=4", "model.n_layers=1",
                 "model.pool_size=4", "model.identity_weight=0.5"] + TINY


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """paired/: 24 RGB 16x16 pairs, B = 255 - A; unpaired/: 12 grey 8x8 images in A/, 9 in B/."""
    root = tmp_path_factory.mktemp("translation")
    rng = np.random.default_rng(0)
    for i in range(24):
        a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        _png(root / "paired" / "A" / f"{i:02d}.png", a)
        _png(root / "paired" / "B" / f"{i:02d}.png", 255 - a)
    for side, n in (("A", 12), ("B", 9)):
        for i in range(n):
            _png(root / "unpaired" / side / f"{side}{i}.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    return {"paired": root / "paired", "unpaired": root / "unpaired"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, folders) -> dict[str, Path]:
    """A pix2pix run on the RGB pairs and a CycleGAN run on the grey domains, 2 steps each."""
    base = tmp_path_factory.mktemp("translation-runs")
    p = genlab.train("pix2pix-mnist-edges", base / "pix2pix", steps=2, overrides=TINY_PIX2PIX + [
        "data.dataset=paired-folder", f"data.path={folders['paired']}"])
    c = genlab.train("cyclegan-mnist-fashion", base / "cyclegan", steps=2, overrides=TINY_CYCLEGAN + [
        "data.dataset=unpaired-folder", f"data.path={folders['unpaired']}"])
    return {"pix2pix": p.run_dir, "cyclegan": c.run_dir}


# --------------------------------------------------------------------------- data


def test_translation_datasets_are_known_to_the_config():
    # the loader reads exactly the datasets the config names, paired ones as pairs
    assert {*paired.EDGE_SOURCES, *paired.UNPAIRED_SOURCES, *paired.FOLDERS} == set(TRANSLATION_DATASETS)
    assert {*paired.EDGE_SOURCES, *(d for d, p in paired.FOLDERS.items() if p)} == set(PAIRED_DATASETS)
    assert set(TRANSLATION_DATASETS) <= set(DATASETS)


@pytest.mark.parametrize("preset, dataset, match", [
    ("cvae-mnist", "mnist-edges", "holds two image domains, for pix2pix or cyclegan"),
    ("ddpm-mnist", "mnist-fashion", "holds two image domains"),
    ("pix2pix-mnist-edges", "mnist", "set data.dataset to one of mnist-edges, fashion-edges, paired-folder$"),
    ("pix2pix-mnist-edges", "mnist-fashion", "pix2pix learns from pairs"),
    ("cyclegan-mnist-fashion", "fashion-mnist", "one of mnist-edges, .*unpaired-folder$"),
])
def test_a_dataset_must_fit_the_model(preset, dataset, match):
    # checked with the config, before any data is read (a one-domain model would fail on batch["x"])
    with pytest.raises(ConfigError, match=match):
        resolve(preset, [f"data.dataset={dataset}"])


def test_edge_map_outlines_a_square():
    x = torch.zeros(1, 1, 12, 12, dtype=torch.uint8)
    assert edge_map(x).sum() == 0  # a flat image has no edges
    x[..., 3:9, 3:9] = 255
    e = edge_map(x)[0, 0] > 0
    assert e[3, 3:9].all() and e[2, 3:9].all()  # both sides of the square's top boundary
    assert not e[5:7, 5:7].any() and not e[0].any()  # not inside, not far outside
    assert edge_map(x.expand(2, 3, -1, -1).contiguous()).shape == (2, 3, 12, 12)


def test_paired_folder_matches_names_not_order(tmp_path):
    for i, name in enumerate(["x", "y", "z"]):
        _png(tmp_path / "A" / f"{name}.png", np.full((4, 4), 10 * i, np.uint8))
    for i, name in reversed(list(enumerate(["x", "y", "z"]))):  # other order, other format for y
        _png(tmp_path / "B" / f"{name}.{'bmp' if name == 'y' else 'png'}", np.full((4, 4), 10 * i + 100, np.uint8))
    a, b = read_paired_folder(tmp_path, None, None)
    assert a.shape == b.shape == (3, 1, 4, 4)
    assert torch.equal(b.int(), a.int() + 100)  # every pair joined by name


def test_paired_folder_refuses_what_does_not_pair(tmp_path):
    for side in "AB":
        _png(tmp_path / side / "x.png", np.zeros((4, 4), np.uint8))
    _png(tmp_path / "A" / "lonely.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=r"no partner of the same name \(e\.g\. A/lonely\.png has none in B/\)"):
        read_paired_folder(tmp_path, None, None)
    _png(tmp_path / "B" / "lonely.png", np.zeros((6, 6), np.uint8))
    with pytest.raises(DataError, match="A/lonely.png is 4x4 but B/lonely.png is 6x6"):
        read_paired_folder(tmp_path, None, None)
    _png(tmp_path / "B" / "lonely.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="B mixes grey and colour images"):
        read_paired_folder(tmp_path, None, None)
    a, b = read_paired_folder(tmp_path, 2, 3)  # data.channels and data.image_size settle both
    assert a.shape == b.shape == (2, 3, 2, 2)
    (tmp_path / "B" / "lonely.png").unlink()
    (tmp_path / "A" / "lonely.png").unlink()
    (tmp_path / "B").rename(tmp_path / "targets")
    with pytest.raises(DataError, match="has no B/ folder"):
        paired.load_paired_data(DataConfig(dataset="paired-folder", path=str(tmp_path)))


def test_a_pair_is_flipped_as_one_image():
    a = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    data = PairedData(a, 255 - a, a[:0], a[:0], a[:0], a[:0], True, "test", "paired-folder", ("A", "B"), [0.5], [0.5])
    feeder = data.feeder(BatchPipeline("minus_one_one", [0.5], [0.5], hflip=True), 6, seed=0)
    torch.manual_seed(1)
    batch = feeder.train_batch(0, 0, 6, "cpu")
    assert torch.allclose(batch["b"], -batch["a"], atol=1e-6)  # B is still 255 - A after the random flips
    assert not torch.equal(batch["a"].sort(0).values, (a.float() / 127.5 - 1).sort(0).values)  # some flipped


# --------------------------------------------------------------------------- networks and losses


@pytest.mark.parametrize("n_layers,expected", [(0, 7), (1, 16), (2, 34), (3, 70)])
def test_patchgan_receptive_field_is_what_the_config_says(n_layers, expected):
    """The input region that reaches one output score, by its gradient, is the computed square."""
    assert receptive_field(patchgan_layers(n_layers)) == expected
    torch.manual_seed(0)
    model = Pix2Pix(Pix2PixConfig(base_channels=4, d_channels=4, n_layers=n_layers, depth=1, channels=1, image_size=24))
    d = model.discriminator.eval()  # batch norm from running statistics: no mixing across pixels
    x = torch.randn(1, 2, expected + 12, expected + 12, requires_grad=True)
    out = d(x)
    h, w = out.shape[-2:]
    out[0, 0, h // 2, w // 2].backward()
    seen = x.grad.abs().sum((0, 1)) > 0  # (H, W)
    rows, cols = seen.any(1).nonzero().flatten(), seen.any(0).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == expected and cols.max() - cols.min() + 1 == expected
    assert seen.sum() == expected ** 2  # a full square


@pytest.mark.parametrize("size, deepest", [(28, 3), (24, 3), (8, 1), (16, 2)])
def test_a_patchgan_too_deep_for_the_image_is_refused(size, deepest):
    Pix2Pix(Pix2PixConfig(base_channels=4, d_channels=4, n_layers=deepest, depth=1, channels=1, image_size=size))
    with pytest.raises(ConfigError, match=f"n_layers={deepest + 1} is too deep .*model.n_layers <= {deepest}$"):
        Pix2Pix(Pix2PixConfig(base_channels=4, d_channels=4, n_layers=deepest + 1, depth=1, channels=1,
                              image_size=size))


def test_unet_output_has_the_input_shape():
    for size, depth, c in ((28, 2, 1), (32, 3, 3), (8, 1, 3)):
        m = Pix2Pix(Pix2PixConfig(base_channels=4, depth=depth, d_channels=4, n_layers=1, channels=c, image_size=size))
        x = torch.randn(2, c, size, size)
        y = m.generator(x)
        assert y.shape == x.shape and y.abs().max() <= 1
    with pytest.raises(ConfigError, match="divisible by 8, got 28"):
        Pix2Pix(Pix2PixConfig(depth=3, channels=1, image_size=28))


def test_cycle_loss_of_an_identity_pair_is_zero():
    torch.manual_seed(0)
    cfg = CycleGANConfig(g_channels=4, n_blocks=1, d_channels=4, n_layers=1, channels=1, image_size=8)
    batch = {"a": torch.rand(3, 1, 8, 8) * 2 - 1, "b": torch.rand(3, 1, 8, 8) * 2 - 1}
    m = CycleGAN(cfg)
    assert m.loss(batch, "generator")["cycle"] > 0.01  # real generators do not invert each other
    m.g_ab, m.g_ba = nn.Identity(), nn.Identity()  # G and F both the identity
    out = m.loss(batch, "generator")
    assert out["cycle"] == 0 and out["identity"] == 0
    assert torch.equal(m.translate(batch["a"], "BtoA"), batch["a"])


def test_image_pool_fills_then_swaps():
    torch.manual_seed(0)
    m = CycleGAN(CycleGANConfig(g_channels=4, n_blocks=0, d_channels=4, n_layers=1, pool_size=4, channels=1,
                                image_size=8))
    first = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8)
    assert torch.equal(m.pool_a.query(first), first) and int(m.pool_a.count) == 4
    new = torch.full((64, 1, 8, 8), 9.0)
    shown = m.pool_a.query(new)
    old = (shown[:, 0, 0, 0] < 9).sum()
    assert 0 < old < 64  # about half come from the pool
    assert "pool_a.images" in m.state_dict()  # checkpoints carry it


def test_a_few_steps_lower_the_l1_term():
    torch.manual_seed(0)
    m = Pix2Pix(Pix2PixConfig(base_channels=8, depth=1, d_channels=8, n_layers=1, dropout=0.0, channels=1,
                              image_size=8))
    a = (torch.rand(8, 1, 8, 8) > 0.7).float() * 2 - 1  # sparse 'sketches'
    batch = {"a": a, "b": a.flip(-1).roll(1, -2)}  # the target: a fixed function of the input
    opts = {k: torch.optim.Adam(v, 2e-3, betas=(0.5, 0.999)) for k, v in m.optimizers().items()}
    before = m.loss(batch, "generator")["l1"].item()
    for _ in range(20):
        for name, _ in m.schedule():
            opts[name].zero_grad(set_to_none=True)
            m.loss(batch, name)["loss"].backward()
            opts[name].step()
    assert m.loss(batch, "generator")["l1"].item() < 0.5 * before


def test_translation_models_need_two_domains():
    m = Pix2Pix(Pix2PixConfig(base_channels=4, depth=1, d_channels=4, n_layers=1, channels=1, image_size=8))
    with pytest.raises(ConfigError, match="set data.dataset to one of mnist-edges"):
        m.loss({"x": torch.zeros(2, 1, 8, 8)}, "generator")
    with pytest.raises(ConfigError, match="translates given images"):
        m.sample(2, generator=torch.Generator())


# --------------------------------------------------------------------------- the engine, apply, evaluate


def test_training_writes_galleries(runs):
    # labelled rows of the 4 validation examples: input / output / target; A, A to B, back to A, B, ...
    for name, rows, size in (("pix2pix", 3, 16), ("cyclegan", 6, 8)):
        im = Image.open(runs[name] / "samples" / "final.png")
        assert im.size[1] == rows * (size + 2) + 2 and im.size[0] > 4 * (size + 2)


def test_resume_continues_exactly_with_the_image_pool(tmp_path, folders):
    """4 steps, or 2 steps then --resume to 4: the same weights, the discriminators' pools included."""
    common = dict(overrides=TINY_CYCLEGAN + ["data.dataset=unpaired-folder", f"data.path={folders['unpaired']}",
                                             "train.steps=4"])
    genlab.train("cyclegan-mnist-fashion", tmp_path / "full", steps=4, **common)
    genlab.train("cyclegan-mnist-fashion", tmp_path / "part", steps=2, **common)
    genlab.train(resume=tmp_path / "part", steps=4)
    full, part = weights_of(tmp_path / "full"), weights_of(tmp_path / "part")
    assert int(full["model.pool_a.count"]) == 4  # full by now: steps 3 and 4 swapped fakes at random
    assert_same_tensors(full, part)


def test_translate_keeps_size_and_mode(runs, tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    _png(tmp_path / "x.png", x)
    out = apply(runs["pix2pix"], "translate", input=tmp_path / "x.png", out=tmp_path / "y.png")
    y = Image.open(out)
    assert y.mode == "RGB" and y.size == (16, 16)
    images = np.random.default_rng(2).integers(0, 256, (3, 1, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "g.npz", images=images, labels=np.array([4, 5, 6]))
    for direction in ("AtoB", "BtoA"):
        out = apply(runs["cyclegan"], "translate", input=tmp_path / "g.npz", out=tmp_path / f"{direction}.npz",
                    direction=direction)
        with np.load(out) as z:
            assert z["images"].shape == images.shape and z["images"].dtype == np.uint8
            assert z["labels"].tolist() == [4, 5, 6]
    with np.load(tmp_path / "AtoB.npz") as z1, np.load(tmp_path / "BtoA.npz") as z2:
        assert not np.array_equal(z1["images"], z2["images"])  # two generators


def test_translate_refuses_bad_inputs_in_one_line(runs, tmp_path, capsys):
    p2p = str(runs["pix2pix"])
    _png(tmp_path / "grey.png", np.zeros((16, 16), np.uint8))
    _png(tmp_path / "big.png", np.zeros((20, 20, 3), np.uint8))
    out = str(tmp_path / "y.png")
    main_fails_in_one_line(capsys, ["apply", p2p, "translate", "--input", str(tmp_path / "grey.png"), "--out", out],
                           "grey.png is greyscale but the run makes RGB images")
    main_fails_in_one_line(capsys, ["apply", p2p, "translate", "--input", str(tmp_path / "big.png"), "--out", out],
                           "translate input must be 16x16 images, got 20x20")
    _png(tmp_path / "ok.png", np.zeros((16, 16, 3), np.uint8))
    main_fails_in_one_line(capsys, ["apply", p2p, "translate", "--input", str(tmp_path / "ok.png"), "--out", out,
                                    "--direction", "BtoA"], "pix2pix runs translate AtoB, not BtoA")
    main_fails_in_one_line(capsys, ["apply", str(runs["cyclegan"]), "denoise", "--input", str(tmp_path / "grey.png"),
                                    "--out", out, "--sigma", "0.1"], "denoise works with diffusion runs")
    main_fails_in_one_line(capsys, ["sample", p2p, "--out", out], "translates given images")
    assert not Path(out).exists()
    np.savez(tmp_path / "grey.npz", images=np.zeros((2, 1, 16, 16), np.uint8))
    with pytest.raises(ShapeError, match=r"'images' must be uint8 N x 3 x H x W"):
        apply(p2p, "translate", input=tmp_path / "grey.npz", out=tmp_path / "y.npz")


def test_serve_translates_as_the_cli_and_keeps_its_refusals(runs, tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[test]'")
    pytest.importorskip("multipart", reason="python-multipart is missing: pip install -e '.[test]'")
    from fastapi.testclient import TestClient

    from genlab.apply import TASKS
    from genlab.serve import create_app
    from genlab.serve.schemas import TASK_NAMES

    assert set(TASK_NAMES) == set(TASKS)  # every apply task has its route
    client = TestClient(create_app([runs["pix2pix"], runs["cyclegan"]]))
    models = {m["id"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["pix2pix"]["tasks"] == ["translate"] and models["cyclegan"]["tasks"] == ["translate"]
    r = client.post("/v1/generate", json={"model": "pix2pix", "n": 1})
    assert r.status_code == 404 and "transforms given images (POST /v1/apply/translate)" in r.json()["detail"]
    _png(tmp_path / "x.png", np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    r = client.post("/v1/apply/translate", data={"model": "pix2pix"},
                    files={"image": ("x.png", (tmp_path / "x.png").read_bytes())})
    assert r.status_code == 200, r.text
    assert r.content == apply(runs["pix2pix"], "translate", input=tmp_path / "x.png", out=tmp_path / "y.png").read_bytes()
    _png(tmp_path / "grey.png", np.zeros((16, 16), np.uint8))  # the CLI refuses it; so does the server
    r = client.post("/v1/apply/translate", data={"model": "pix2pix"},
                    files={"image": ("grey.png", (tmp_path / "grey.png").read_bytes())})
    assert r.status_code == 400 and "image is greyscale but the run makes RGB images" in r.json()["detail"]


def test_evaluate_reports_the_metrics_that_apply(runs, tmp_path):
    from genlab.evaluation import evaluate

    rep = evaluate(runs["pix2pix"], out=tmp_path / "p.json", html=False)["metrics"]
    assert set(rep) == {"mse", "psnr", "ssim"}  # 16x16 RGB: no offline extractor, no classifier
    assert 0 < rep["psnr"]["value"] < 60 and rep["psnr"]["n"] == 4
    rep = evaluate(runs["cyclegan"], out=tmp_path / "c.json", html=False)["metrics"]
    assert set(rep) == {"cycle_l1_aba", "cycle_l1_bab"}
    assert 0 < rep["cycle_l1_aba"]["value"] < 1
    with pytest.raises(ConfigError, match="fid do.*not apply.*it has: cycle_l1_aba, cycle_l1_bab"):
        evaluate(runs["cyclegan"], out=tmp_path / "c.json", metrics=["fid"], html=False)
