"""`genlab apply`: each task's output layout, inpainting keeping the known pixels exactly,
the families each task accepts, and one-line errors for bad input."""

import numpy as np
import pytest
import torch

import genlab
from genlab.apply import apply
from genlab.apply.inpaint import make_mask
from genlab.errors import ConfigError, DataError, ShapeError
from tests.conftest import TINY_VAE, run_cli
from tests.test_diffusion import TINY_DIFFUSION, small_mnist

FAST = {"sampling_steps": 2}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    """Tiny diffusion, VAE and PixelCNN runs on 16x16 MNIST digits, and 3 test images."""
    root = tmp_path_factory.mktemp("apply")
    data = small_mnist(root, data_root)
    out = {
        "diffusion": genlab.train("ddpm-mnist", root / "diffusion", steps=2, data_root=str(data_root),
                                  overrides=TINY_DIFFUSION + data).run_dir,
        "vae": genlab.train("vae-mnist", root / "vae", steps=2, data_root=str(data_root),
                            overrides=TINY_VAE + data).run_dir,
        "pixelcnn": genlab.train("pixelcnn-mnist", root / "pixelcnn", steps=2, data_root=str(data_root),
                                 overrides=["model.hidden=8", "model.layers=2", "model.out_hidden=16",
                                            "train.batch_size=32", "train.eval_every=1000", "train.eval_batches=1",
                                            "train.sample_every=1000"] + data).run_dir,
    }
    with np.load(root / "mnist16.npz") as z:
        x = torch.from_numpy(z["images"][:3])
    np.savez(root / "x.npz", images=x.numpy(), labels=np.array([7, 2, 1]))
    np.savez(root / "low.npz", images=torch.nn.functional.avg_pool2d(x.float(), 2).round().to(torch.uint8).numpy())
    out["root"] = root
    return out


def _read(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("family, mask", [("diffusion", "center"), ("diffusion", "boxes"), ("vae", "center"),
                                          ("vae", "left-half"), ("pixelcnn", "bottom-half")])
def test_inpaint_keeps_the_known_pixels(runs, tmp_path, family, mask):
    opts = {**FAST, "resample": 2} if family == "diffusion" else {"iters": 5} if family == "vae" else {}
    out = apply(runs[family], "inpaint", input=runs["root"] / "x.npz", out=tmp_path / "o.npz", mask=mask, seed=1,
                **opts)
    got, src = _read(out), _read(runs["root"] / "x.npz")
    assert set(got) == {"images", "labels"} and got["images"].dtype == np.uint8
    assert got["images"].shape == src["images"].shape and got["labels"].tolist() == [7, 2, 1]
    fill = make_mask(mask, 3, 16, 16, seed=1).expand(3, 1, 16, 16).numpy()
    assert (got["images"][~fill] == src["images"][~fill]).all()
    assert (got["images"][fill] != src["images"][fill]).any()


def test_inpaint_average_is_the_mean_of_the_single_fills(runs):
    """--average K is the mean of the fills with seeds seed .. seed + K - 1 (in model space, so up
    to one 8-bit level of rounding), and reconstruction guidance changes the fill."""
    from genlab.apply.inpaint import run_inpaint

    run = genlab.load(runs["diffusion"])
    with np.load(runs["root"] / "x.npz") as z:
        x = torch.from_numpy(z["images"])
    one = [run_inpaint(run, x, None, seed=s, **FAST).float() for s in (4, 5)]
    two = run_inpaint(run, x, None, seed=4, average=2, **FAST).float()
    assert (two - (one[0] + one[1]) / 2).abs().max() <= 1
    assert not torch.equal(one[0], one[1])
    plain = run_inpaint(run, x, None, seed=4, zeta=0.0, **FAST).float()
    assert (plain != one[0]).any()


def test_masks():
    c = make_mask("center", 1, 28, 28)[0, 0]
    assert c.sum() == 14 * 14 and c[7:21, 7:21].all()
    assert make_mask("left-half", 1, 28, 28)[0, 0, :, :14].all() and make_mask("left-half", 1, 28, 28).sum() == 392
    assert make_mask("bottom-half", 1, 28, 28)[0, 0, 14:].all() and make_mask("bottom-half", 1, 28, 28).sum() == 392
    b = make_mask("boxes", 4, 28, 28, seed=3)
    assert b.shape == (4, 1, 28, 28) and torch.equal(b, make_mask("boxes", 4, 28, 28, seed=3))
    with pytest.raises(ConfigError, match="--mask must be one of"):
        make_mask("middle", 1, 28, 28)


def test_mask_png_and_png_in_png_out(runs, tmp_path):
    from PIL import Image

    m = np.zeros((16, 16), np.uint8)
    m[:5] = 255  # fill the top 5 rows
    Image.fromarray(m).save(tmp_path / "m.png")
    Image.fromarray(_read(runs["root"] / "x.npz")["images"][0, 0]).save(tmp_path / "in.png")
    out = apply(runs["diffusion"], "inpaint", input=tmp_path / "in.png", out=tmp_path / "out.png",
                mask=str(tmp_path / "m.png"), resample=1, **FAST)
    a, b = np.asarray(Image.open(tmp_path / "in.png")), np.asarray(Image.open(out))
    assert b.shape == (16, 16) and (a[5:] == b[5:]).all()
    Image.fromarray(m[:10]).save(tmp_path / "small.png")
    with pytest.raises(ShapeError, match="the images are 16x16"):
        apply(runs["diffusion"], "inpaint", input=tmp_path / "in.png", out=tmp_path / "o.png",
              mask=str(tmp_path / "small.png"))


def test_pixelcnn_refuses_masks_out_of_raster_order(runs, tmp_path):
    with pytest.raises(ConfigError, match="raster order"):
        apply(runs["pixelcnn"], "inpaint", input=runs["root"] / "x.npz", out=tmp_path / "o.npz", mask="center")
    assert not (tmp_path / "o.npz").exists()


def test_denoise_output_and_start_step(runs, tmp_path):
    from genlab.apply.denoise import start_step
    from genlab.models.diffusion.schedules import step_for_noise

    out = apply(runs["diffusion"], "denoise", input=runs["root"] / "x.npz", out=tmp_path / "d.npz", sigma=0.5, **FAST)
    got = _read(out)
    assert got["images"].shape == (3, 1, 16, 16) and got["images"].dtype == np.uint8
    run = genlab.load(runs["diffusion"])
    # sigma is on the [0, 1] pixel scale; the run's data are in [-1, 1], where the noise is twice as large
    assert start_step(run.model, 1.0) == step_for_noise(run.model.alpha_bar.cpu(), 1.0)
    from genlab.apply.io import pixel_scale

    assert pixel_scale(run) == pytest.approx(2.0)


def test_upscale_output_and_consistency(runs, tmp_path):
    from genlab.models.diffusion.ddpm import avg_pool_consistency

    out = apply(runs["diffusion"], "upscale", input=runs["root"] / "low.npz", out=tmp_path / "u.npz", **FAST)
    assert _read(out)["images"].shape == (3, 1, 16, 16)
    low = torch.rand(2, 1, 14, 14, dtype=torch.float64)
    x0 = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    fixed = avg_pool_consistency(low, 2)(x0, 0)
    assert torch.allclose(torch.nn.functional.avg_pool2d(fixed, 2), low, atol=1e-12)
    with pytest.raises(ShapeError, match="upscale input must be 8x8"):
        apply(runs["diffusion"], "upscale", input=runs["root"] / "x.npz", out=tmp_path / "u.npz")


@pytest.mark.parametrize("family", ["diffusion", "vae"])
def test_interpolate_strip(runs, tmp_path, family):
    from PIL import Image

    out = apply(runs[family], "interpolate", input=None, out=tmp_path / "s.png", seeds=[1, 2], steps=5,
                **(FAST if family == "diffusion" else {}))
    from genlab.apply.io import label_margin

    # one row of 5 frames, 2-pixel padding, after the row's label
    assert np.asarray(Image.open(out)).shape == (16 + 4, label_margin(["seeds 1, 2"]) + 5 * 18 + 2)
    x = _read(runs["root"] / "x.npz")["images"][:2]
    np.savez(tmp_path / "two.npz", images=x)
    out = apply(runs[family], "interpolate", input=tmp_path / "two.npz", out=tmp_path / "f.npz", steps=4,
                **(FAST if family == "diffusion" else {}))
    assert _read(out)["images"].shape == (4, 1, 16, 16)
    with pytest.raises(ShapeError, match="even number of images"):
        apply(runs[family], "interpolate", input=runs["root"] / "x.npz", out=tmp_path / "f.npz")


def test_tasks_name_the_families_that_can(runs, tmp_path):
    x = runs["root"] / "x.npz"
    with pytest.raises(ConfigError, match="denoise works with diffusion runs; .* is a vae run"):
        apply(runs["vae"], "denoise", input=x, out=tmp_path / "o.npz", sigma=0.5)
    with pytest.raises(ConfigError, match="interpolate works with diffusion, vae, gan runs"):
        apply(runs["pixelcnn"], "interpolate", input=None, out=tmp_path / "o.png", seeds=[0, 1])
    with pytest.raises(ConfigError, match="--sampler: diffusion options"):
        apply(runs["vae"], "inpaint", input=x, out=tmp_path / "o.npz", sampler="ddim")


def test_bad_input_one_line_errors(runs, tmp_path):
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 1, 16, 16), np.float32))
    np.savez(tmp_path / "k.npz", pixels=np.zeros((2, 1, 16, 16), np.uint8))
    cases = [(tmp_path / "missing.npz", DataError, "not found"),
             (tmp_path / "f.npz", ShapeError, "must be uint8 N x 1 x H x W"),
             (tmp_path / "k.npz", ShapeError, "has no 'images' array"),
             (runs["root"] / "low.npz", ShapeError, "must be 16x16 images, got 8x8")]
    for path, err, msg in cases:
        with pytest.raises(err, match=msg):
            apply(runs["diffusion"], "denoise", input=path, sigma=0.3, out=tmp_path / "o.npz")
    # the command line: one line, non-zero exit, nothing written
    r = run_cli("apply", str(runs["diffusion"]), "denoise", "--input", str(runs["root"] / "low.npz"),
                "--sigma", "0.3", "--out", str(tmp_path / "o.npz"))
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "got 8x8" in r.stderr, r.stderr
    assert not (tmp_path / "o.npz").exists()
    with pytest.raises(ConfigError, match="--out must be FILE.npz or FILE.png"):
        apply(runs["vae"], "inpaint", input=runs["root"] / "x.npz", out=tmp_path / "o.jpg")
