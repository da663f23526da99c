"""`genlab apply RUN edit` (SDEdit) on the shipped demo:ddpm-mnist: strength 0 returns the guide,
strength 1 ignores it, a mask keeps the outside, the input's size and mode are kept, and bad
input gives one-line errors."""

import numpy as np
import pytest
import torch

import genlab
from genlab.apply import apply
from genlab.apply.edit import run_edit, sdedit, start_step
from genlab.apply.inpaint import make_mask
from genlab.apply.io import to_model_space
from genlab.errors import ConfigError, DataError, ShapeError
from genlab.seed import make_generator
from tests.conftest import main_fails_in_one_line

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"sampling_steps": 2}


@pytest.fixture(scope="module")
def run():
    return genlab.load("demo:ddpm-mnist")


@pytest.fixture(scope="module")
def guides(run):
    """Two MNIST-like guides (uint8 (2, 1, 28, 28)): the model's own samples, fixed by a seed."""
    return run.sample(2, seed=3, sampler="dpmpp", steps=4)[0]


def test_start_step_by_hand():
    assert start_step(1000, 1.0) == 999
    assert start_step(1000, 0.5) == 499
    assert start_step(1000, 0.2) == 199
    assert start_step(1000, 1e-6) == 0


def test_strength_zero_returns_the_guide(run, guides):
    assert torch.equal(run_edit(run, guides, None, strength=0.0, **FAST), guides)
    x = to_model_space(run, guides)
    assert torch.equal(sdedit(run.model, x, 0.0, generator=make_generator(0)), x)


def test_strength_one_ignores_the_guide(run, guides):
    """Different guides, same seed: the same output (pure noise at the last step), for a
    deterministic and an ancestral sampler."""
    other = 255 - guides
    for sampler in ("dpmpp", "ddpm"):
        a = run_edit(run, guides, None, strength=1.0, seed=5, sampler=sampler, **FAST)
        b = run_edit(run, other, None, strength=1.0, seed=5, sampler=sampler, **FAST)
        assert torch.equal(a, b)
    c = run_edit(run, guides, None, strength=1.0, seed=6, **FAST)
    assert not torch.equal(a, c)  # the seed does matter


def test_low_strength_stays_closer_to_the_guide(run, guides):
    g = guides.float()
    dist = {s: (run_edit(run, guides, None, strength=s, seed=1, **FAST).float() - g).pow(2).mean().item()
            for s in (0.1, 1.0)}
    assert dist[0.1] < dist[1.0] / 4


def test_mask_keeps_the_outside(run, guides):
    edit = make_mask("center", 2, 28, 28)
    out = run_edit(run, guides, None, strength=0.8, mask="center", seed=2, **FAST)
    keep = ~edit.expand(2, 1, 28, 28)
    assert torch.equal(out[keep], guides[keep]) and not torch.equal(out[~keep], guides[~keep])
    # in the model's space too: the x0 hook holds the outside on the guide at every step
    x = to_model_space(run, guides)
    x0 = sdedit(run.model, x, 0.8, steps=3, generator=make_generator(2), edit=edit)
    assert torch.equal(x0[keep], x[keep])


def test_cli_keeps_size_and_mode(run, guides, tmp_path):
    from PIL import Image

    from genlab.cli import main

    Image.fromarray(guides[0, 0].numpy()).save(tmp_path / "g.png")
    assert main(["apply", "demo:ddpm-mnist", "edit", "--input", str(tmp_path / "g.png"), "--strength", "0.4",
                 "--sampling-steps", "2", "--out", str(tmp_path / "o.png")]) == 0
    with Image.open(tmp_path / "o.png") as im:
        assert im.mode == "L" and im.size == (28, 28)
    np.savez(tmp_path / "g.npz", images=guides.numpy(), labels=np.array([4, 9]))
    out = apply("demo:ddpm-mnist", "edit", input=tmp_path / "g.npz", out=tmp_path / "o.npz", strength=0.3, **FAST)
    with np.load(out) as z:
        assert z["images"].shape == (2, 1, 28, 28) and z["images"].dtype == np.uint8
        assert z["labels"].tolist() == [4, 9]


def test_bad_inputs_one_line_errors(run, guides, tmp_path, capsys):
    from PIL import Image

    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (28, 28), (200, 10, 10)).save(rgb)
    with pytest.raises(ShapeError, match="is RGB but the run makes greyscale images"):
        apply("demo:ddpm-mnist", "edit", input=rgb, out=tmp_path / "o.png", strength=0.5)
    np.savez(tmp_path / "small.npz", images=np.zeros((1, 1, 16, 16), np.uint8))
    with pytest.raises(ShapeError, match="edit input must be 28x28 images, got 16x16"):
        apply("demo:ddpm-mnist", "edit", input=tmp_path / "small.npz", out=tmp_path / "o.png", strength=0.5)
    with pytest.raises(DataError, match="not found"):
        apply("demo:ddpm-mnist", "edit", input=tmp_path / "missing.png", out=tmp_path / "o.png", strength=0.5)
    with pytest.raises(ConfigError, match="--label needs a class-conditional diffusion run"):
        run_edit(run, guides, None, strength=0.5, label=3)
    main_fails_in_one_line(capsys, ["apply", "demo:ddpm-mnist", "edit", "--input", str(rgb), "--strength", "1.5",
                                    "--out", str(tmp_path / "o.png")], "--strength must be in 0..1, got 1.5")
    main_fails_in_one_line(capsys, ["apply", "demo:cvae-mnist", "edit", "--input", str(rgb), "--strength", "0.5",
                                    "--out", str(tmp_path / "o.png")], "edit works with diffusion runs")
    assert not (tmp_path / "o.png").exists()
