"""Style transfer: the Gram matrix and losses against hand computations, the random feature
network, the optimiser (`genlab apply style`), the photos dataset, and the feed-forward style
network trained by the engine and applied to a photo of another size."""

import numpy as np
import pytest
import torch

import genlab
from genlab.apply.style import run_style, stylise
from genlab.config import resolve
from genlab.data.photos import photo_crops, read_photo, scale_to
from genlab.errors import ConfigError, DataError, ShapeError
from genlab.metrics.style import (FeatureSpec, PerceptualLoss, RandomFeatures, content_loss, gram, style_loss,
                                  tv_loss)
from genlab.models.style import StyleConfig, StyleNet
from tests.conftest import main_fails_in_one_line

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_SPEC = FeatureSpec(widths=(4, 8), style_levels=(0, 1), content_level=1)
TINY_NET = ["model.width=4", "model.res_blocks=1", "model.feature_widths=[4,8]", "model.content_level=1",
            "data.image_size=32", "train.batch_size=2", "train.eval_batches=1", "train.eval_every=1000",
            "train.sample_every=1000", "train.warmup_steps=0", "data.val_size=4", "data.test_size=4"]


def _png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)
    return path


def _pattern(h, w, seed=0) -> np.ndarray:
    """A colourful smooth-plus-stripes uint8 (h, w, 3) image."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    chans = [127 + 120 * np.sin(xx / (2 + c + seed) + rng.uniform(0, 6) + yy / (5 + c)) for c in range(3)]
    return np.stack(chans, -1).clip(0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- losses by hand


def test_gram_and_style_loss_by_hand():
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)  # 2 channels, 2 positions
    g = gram(f)
    # F F^T / (H W): [[1+4, 3+8], [3+8, 9+16]] / 2
    assert torch.allclose(g, torch.tensor([[[2.5, 5.5], [5.5, 12.5]]]))
    zero = torch.zeros(1, 2, 2)
    # mean over the 4 entries of the squared difference: (6.25 + 30.25 + 30.25 + 156.25) / 4
    assert torch.allclose(style_loss([g], [zero]), torch.tensor([55.75]))
    assert torch.allclose(style_loss([g, g], [zero, g]), torch.tensor([55.75]))  # summed over levels
    # Gram matrices do not depend on the image size: the same statistics tiled twice
    assert torch.allclose(gram(torch.cat([f, f], -1)), g)


def test_content_and_tv_loss_by_hand():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    # vertical differences 2, 2 -> mean of squares 4; horizontal 1, 1 -> 1
    assert torch.allclose(tv_loss(x), torch.tensor([5.0]))
    assert torch.allclose(content_loss(x, torch.zeros_like(x)), torch.tensor([3.5]))  # (0 + 1 + 4 + 9) / 4


def test_random_features_are_fixed_multiscale_and_not_stored():
    a, b = RandomFeatures(TINY_SPEC), RandomFeatures(TINY_SPEC)
    x = torch.rand(2, 3, 20, 18)
    fa, fb = a(x), b(x)
    assert [tuple(f.shape) for f in fa] == [(2, 4, 20, 18), (2, 8, 10, 9)]
    assert all(torch.equal(u, v) for u, v in zip(fa, fb))
    assert not torch.equal(RandomFeatures(FeatureSpec(widths=(4, 8), seed=1))(x)[0], fa[0])
    assert a.state_dict() == {} and all((f >= 0).all() for f in fa)  # ReLU features, filters not saved
    with pytest.raises(ShapeError, match="RGB images"):
        a(torch.rand(1, 1, 8, 8))


def test_perceptual_loss_is_zero_for_the_content_itself_and_weights_terms():
    c, s = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 24, 20)
    loss = PerceptualLoss(TINY_SPEC, content_weight=2.0, style_weight=3.0, tv_weight=0.5)
    target, grams = loss.targets(c, s)
    t = loss(c, target, grams)
    assert t["content"].item() == 0 and t["style"].item() > 0
    assert torch.allclose(t["loss"], 3.0 * t["style"] + 0.5 * t["tv"])
    t = loss(s, *loss.targets(s, s))  # the style image as content and style: nothing to change
    assert t["content"].item() == 0 and t["style"].item() < 1e-10


# --------------------------------------------------------------------------- optimisation


def test_optimiser_lowers_style_plus_content_loss():
    c = torch.from_numpy(_pattern(32, 32, 0)).permute(2, 0, 1)[None].float() / 255
    s = torch.from_numpy(_pattern(32, 32, 3)[:, ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    loss = PerceptualLoss(TINY_SPEC, 1.0, 100.0, 1.0)
    target, grams = loss.targets(c, s)
    before = loss(c, target, grams)["loss"].item()
    out = stylise(c, s, iters=5, spec=TINY_SPEC)
    assert out.shape == c.shape and 0 <= out.min() and out.max() <= 1
    assert loss(out, target, grams)["loss"].item() < 0.5 * before


def test_run_style_keeps_size_and_mode(tmp_path):
    content = torch.from_numpy(_pattern(40, 36)).permute(2, 0, 1)[None]  # (1, 3, 40, 36)
    style = _png(tmp_path / "s.png", _pattern(50, 70, 5))
    out = run_style(None, content, None, style=str(style), iters=1)
    assert out.shape == (1, 3, 40, 36) and out.dtype == torch.uint8


def test_cli_style_without_a_run_and_one_line_errors(tmp_path, capsys):
    from PIL import Image

    from genlab.cli import main

    content = _png(tmp_path / "c.jpg", _pattern(40, 48))
    style = _png(tmp_path / "s.png", _pattern(30, 30, 2))
    assert main(["apply", "style", "--content", str(content), "--style", str(style), "--iters", "1",
                 "--out", str(tmp_path / "o.png")]) == 0
    with Image.open(tmp_path / "o.png") as im:
        assert im.mode == "RGB" and im.size == (48, 40)
    out = tmp_path / "x.png"
    big = _png(tmp_path / "big.png", np.zeros((10, 641, 3), np.uint8))
    grey = _png(tmp_path / "grey.png", np.zeros((40, 40), np.uint8))
    for args, msg in ((["--content", str(big), "--style", str(style)], "takes images up to 640 pixels a side"),
                      (["--content", str(grey), "--style", str(style)], "is a greyscale image"),
                      (["--content", str(tmp_path / "no.png"), "--style", str(style)], "not found"),
                      (["--content", str(content), "--style", "sample:nope.jpg"], "no sample photo 'nope.jpg'"),
                      (["--content", str(content)], "needs --style IMAGE"),
                      (["--content", str(content), "--style", str(style), "--strength", "0.5"],
                       "--strength is not an option of style")):
        main_fails_in_one_line(capsys, ["apply", "style", *args, "--out", str(out)], msg)
    main_fails_in_one_line(capsys, ["apply", str(tmp_path), "--content", str(content), "--out", str(out)],
                           "give a task after")
    assert not out.exists()
    small = torch.zeros(1, 3, 20, 40, dtype=torch.uint8)
    with pytest.raises(ShapeError, match="32 to 640 pixels a side"):
        run_style(None, small, None, style=str(style))


# --------------------------------------------------------------------------- data


def test_photos_and_crops():
    china = read_photo("sample:china.jpg", "x")
    assert china.shape == (1, 3, 427, 640) and china.dtype == torch.uint8
    a = photo_crops([china], 3, 16, seed=1)
    assert a.shape == (3, 3, 16, 16) and torch.equal(a, photo_crops([china], 3, 16, seed=1))
    assert scale_to(china, 100).shape == (1, 3, 100, 150)
    with pytest.raises(DataError, match="no sample photo"):
        read_photo("sample:x.jpg", "data.style")


def test_config_checks():
    cfg = resolve("style-transfer")
    assert cfg.data.style == "sample:flower.jpg" and cfg.data.dataset == "photos"
    with pytest.raises(ConfigError, match="data.style is the style image of style-transfer runs"):
        resolve("ddpm-mnist", ["data.style=sample:flower.jpg"])
    with pytest.raises(ConfigError, match="need a style image"):
        resolve("style-transfer", ["data.style=null"])
    with pytest.raises(ConfigError, match="data.normalize=zero_one"):
        resolve("style-transfer", ["data.normalize=minus_one_one"])
    with pytest.raises(ConfigError, match="colour images"):
        StyleNet(StyleConfig(channels=1))


# --------------------------------------------------------------------------- feed-forward network


def test_style_net_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    model = StyleNet(StyleConfig(width=4, res_blocks=1, feature_widths=(4, 8), content_level=1, channels=3))
    batch = {"x": torch.rand(2, 3, 24, 24), "style": torch.from_numpy(_pattern(24, 24, 1)).permute(2, 0, 1)[None]
             .float() / 255}
    assert model(torch.rand(1, 3, 21, 30)).shape == (1, 3, 21, 30)  # any size, not only multiples of 4
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        out = model.loss(batch)
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert set(out) == {"loss", "content", "style", "tv"}
    assert losses[-1] < 0.7 * losses[0]


def test_train_and_apply_a_style_run(tmp_path, capsys):
    """A tiny style-transfer run on crops of a folder of photos (3 steps), then applied to a
    photo of another size: the output keeps it; sampling is refused in one line."""
    from PIL import Image

    from genlab.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        _png(photos / f"{i}.png", _pattern(48, 64, i))
    style = _png(tmp_path / "style.png", _pattern(40, 40, 7))
    res = genlab.train("style-transfer", tmp_path / "run", steps=3,
                       overrides=TINY_NET + [f"data.path={photos}", f"data.style={style}"])
    assert (res.run_dir / "samples" / "final.png").is_file()
    run = genlab.load(res.run_dir)
    assert run.meta["style_size"] == [32, 32] and run.cfg.model_name == "style"
    content = _png(tmp_path / "c.png", _pattern(36, 52, 3))
    assert main(["apply", str(res.run_dir), "style", "--content", str(content), "--out", str(tmp_path / "o.png")]) == 0
    with Image.open(tmp_path / "o.png") as im:
        assert im.mode == "RGB" and im.size == (52, 36)
    main_fails_in_one_line(capsys, ["sample", str(res.run_dir), "--out", str(tmp_path / "s.png")],
                           "draws no samples")
    main_fails_in_one_line(capsys, ["apply", str(res.run_dir), "style", "--content", str(content), "--style",
                                    str(style), "--out", str(tmp_path / "p.png")], "its style built in")
