"""Self-supervised pretext tasks (rotation, masked patches) and the linear probe: rotation labels,
the masked loss's support, the encoder's names and shapes against the VAE's (what --init-from
loads), the probe on hand-made features, and a short rotation run measured end to end."""

import pytest
import torch

import genlab
from genlab.config import resolve
from genlab.engine.run import resolve_data_fields
from genlab.errors import ConfigError
from genlab.evaluation.probe import encoder_features, has_image_encoder, probe_layer
from genlab.metrics.catalog import describe
from genlab.metrics.probe import balanced_subset, fit_linear_probe
from genlab.models.pretext import PretextConfig, PretextModel, masked_mse, patch_mask, rotations
from genlab.models.vae import VAE, VAEConfig
from tests.conftest import TINY_VAE, main_fails_in_one_line

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["train.test_batches=2", "model.base_channels=4", "model.hidden=32", "model.latent_dim=8", "train.batch_size=32",
        "train.warmup_steps=5", "train.eval_every=1000", "train.eval_batches=2", "train.sample_every=1000",
        "train.ckpt_every=1000", "train.log_every=20", "train.lr=3e-3", "data.train_size=2000"]


# ----------------------------------------------------------------------------- rotation

def test_rotation_labels_undo_the_rotation_and_cover_all_four():
    x = torch.rand(3, 2, 8, 8)
    xs, labels = rotations(x)
    assert xs.shape == (12, 2, 8, 8) and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for i in range(12):
        assert torch.equal(torch.rot90(xs[i], -int(labels[i]), (1, 2)), x[i % 3])  # rotated back: the original
    one = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # a single bright pixel in the top-left corner
    turned, lab = rotations(one)
    assert sorted(lab.tolist()) == [0, 1, 2, 3]
    corners = {tuple((t[0] == 1).nonzero()[0].tolist()) for t in turned}
    assert len(corners) == 4  # four different images, one per label


# ----------------------------------------------------------------------------- masked patches

def test_masked_loss_counts_only_masked_pixels():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 6, 6)
    mask = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    mask[0, :, :2, :2] = True  # 4 pixels x 3 channels
    mask[1, :, 3:, 3:] = True  # 9 pixels x 3 channels
    out = x.clone()
    out[mask.expand_as(x)] += 2.0
    assert masked_mse(out, x, mask).item() == pytest.approx(4.0)  # every masked value off by 2
    changed = out.clone()
    changed[~mask.expand_as(x)] = torch.randn(int((~mask).sum()) * 3)  # anything outside the mask
    assert masked_mse(changed, x, mask).item() == pytest.approx(4.0)
    changed[0, 0, 0, 0] += 1.0  # inside: (3^2 - 2^2) / 39 more
    assert masked_mse(changed, x, mask).item() == pytest.approx(4.0 + 5.0 / 39)


def test_patch_mask_hides_the_asked_share_of_whole_cells():
    torch.manual_seed(0)
    m = patch_mask(5, 8, 2, 0.25)  # a 4x4 grid of 2x2 cells, 4 masked per image
    assert m.shape == (5, 1, 8, 8) and m.dtype == torch.bool
    assert m.flatten(1).sum(1).tolist() == [16] * 5
    cells = m[:, 0, ::2, ::2]
    assert torch.equal(cells.repeat_interleave(2, 1).repeat_interleave(2, 2), m[:, 0])  # whole cells only
    assert len({tuple(c.flatten().tolist()) for c in cells}) > 1  # drawn per image
    g = torch.Generator().manual_seed(3)
    assert torch.equal(patch_mask(2, 7, 3, 0.5, generator=g), patch_mask(2, 7, 3, 0.5,
                                                                         generator=torch.Generator().manual_seed(3)))


def test_masked_model_encodes_the_image_with_its_patches_zeroed():
    """The loss is masked_mse of the decoding of the image with its patches zeroed (drawn from
    torch's global generator), and the visible pixels change it."""
    torch.manual_seed(0)
    cfg = PretextConfig(task="masked", base_channels=4, hidden=16, latent_dim=4, patch=4, channels=1, image_size=8)
    model = PretextModel(cfg)
    x = torch.rand(2, 1, 8, 8)
    torch.manual_seed(1)
    mask = patch_mask(2, 8, 4, 0.25)
    torch.manual_seed(1)
    a = model.loss({"x": x})["masked_mse"]
    x2 = x.clone()
    x2[~mask] = torch.rand(int((~mask).sum()))  # change only what the encoder sees
    torch.manual_seed(1)
    b = model.loss({"x": x2})["masked_mse"]
    assert a.item() != pytest.approx(b.item())  # the visible pixels matter
    with torch.no_grad():
        out = model.decoder(model.encoder(x * ~mask, None)[0], None)
    assert a.item() == pytest.approx(masked_mse(out, x, mask).item(), rel=1e-6)


# ----------------------------------------------------------------------------- transfer to the VAE

def _filled(preset, *sets):
    cfg = resolve(preset, list(sets))
    return resolve_data_fields(cfg, type("D", (), {"channels": 1, "image_size": 28, "num_classes": 10})()).model


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("preset", ["rotation-mnist", "masked-mnist"])
def test_encoder_names_and_shapes_equal_the_vae_encoder(preset):
    pre = PretextModel(_filled(preset))
    vae = VAE(_filled("vae-mnist", "model.arch=conv"))
    assert type(pre.encoder) is type(vae.encoder)
    assert _shapes(pre.encoder) == _shapes(vae.encoder)
    vae_sd = vae.state_dict()
    shared = {k: v for k, v in pre.state_dict().items() if k in vae_sd and vae_sd[k].shape == v.shape}
    assert {k for k in shared if k.startswith("encoder.")} == {k for k in vae_sd if k.startswith("encoder.")}
    if preset == "masked-mnist":  # the decoder transfers too
        assert {k for k in shared if k.startswith("decoder.")} == {k for k in vae_sd if k.startswith("decoder.")}
    else:
        assert set(shared) == {k for k in vae_sd if k.startswith("encoder.")}  # the head stays behind
    vae.load_state_dict(shared, strict=False)  # what --init-from does with matching names and shapes
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(vae.encode(x)[0], pre.probe_features(x))


def test_probe_reads_mu_or_the_label_blind_trunk():
    base = dict(arch="conv", base_channels=4, hidden=16, latent_dim=3, channels=1, image_size=8)
    vae, cvae = VAE(VAEConfig(**base)), VAE(VAEConfig(**base, conditional=True, num_classes=10))
    x = torch.rand(2, 1, 8, 8)
    assert probe_layer(vae) == "mu" and encoder_features(vae, x).shape == (2, 3)
    assert probe_layer(cvae) == "trunk" and encoder_features(cvae, x).shape == (2, 8 * 2 * 2)
    assert has_image_encoder(PretextModel) and has_image_encoder(VAE)
    from genlab.models.gan import GAN
    assert not has_image_encoder(GAN)
    with pytest.raises(ConfigError, match="task must be rotation or masked"):
        PretextConfig(task="jigsaw").validate()


# ----------------------------------------------------------------------------- the probe

def test_balanced_subset_takes_equal_shares_fixed_by_the_seed():
    y = torch.arange(3).repeat(20)  # 20 of each of 3 classes
    idx = balanced_subset(y, 7, seed=0)
    assert torch.bincount(y[idx]).tolist() == [3, 2, 2] and len(set(idx.tolist())) == 7
    assert torch.equal(idx, balanced_subset(y, 7, seed=0)) and not torch.equal(idx, balanced_subset(y, 7, seed=1))
    with pytest.raises(ConfigError, match="at least one labelled image per class"):
        balanced_subset(y, 2, seed=0)


def test_probe_separates_separable_features_and_not_random_ones():
    g = torch.Generator().manual_seed(0)
    k, d = 10, 16
    centres = 5 * torch.randn(k, d, generator=g)
    y_tr, y_te = torch.arange(k).repeat(10), torch.arange(k).repeat(200)
    separable = lambda y: centres[y] + 0.3 * torch.randn(len(y), d, generator=g)  # noqa: E731
    probe = fit_linear_probe(separable(y_tr), y_tr, k)
    assert probe.accuracy(separable(y_te), y_te) > 0.99
    noise = lambda y: torch.randn(len(y), d, generator=g)  # noqa: E731  (nothing of the class)
    probe = fit_linear_probe(noise(y_tr), y_tr, k)
    acc = probe.accuracy(noise(y_te), y_te)
    assert 0.04 < acc < 0.17  # chance is 0.1
    a = fit_linear_probe(centres[y_tr] + 1.0, y_tr, k)
    b = fit_linear_probe(centres[y_tr] + 1.0, y_tr, k)
    assert torch.equal(a.weight, b.weight)  # deterministic


def test_catalog_knows_the_new_names():
    assert describe("probe")[1] == "higher" and describe("probe_random")[1] == "higher"
    assert describe("test_accuracy")[1] == "higher" and describe("test_masked_mse")[1] == "lower"


# ----------------------------------------------------------------------------- end to end

def test_short_rotation_training_beats_chance_and_is_probed(tmp_path, data_root, capsys):
    from genlab.evaluation import evaluate

    res = genlab.train("rotation-mnist", tmp_path / "rot", overrides=TINY, steps=60, data_root=str(data_root))
    report = evaluate(res.run_dir, html=False, probe_labels=50)
    m = report["metrics"]
    # chance: 0.25; over the first train.test_batches=2 test batches of 32 (TINY)
    assert m["test_accuracy"]["value"] > 0.5 and m["test_accuracy"]["n"] == 64
    assert set(m) == {"test_loss", "test_accuracy", "probe", "probe_random"}  # no sample metrics
    for name in ("probe", "probe_random"):
        e = m[name]
        assert e["n"] == 50 and e["seed"] == 0 and e["n_test"] == 10_000 and e["layer"] == "mu"
        assert 0.2 < e["value"] <= 1.0  # far above chance (0.1) from 50 labels, even random conv features
    assert m["probe"]["encoder"] == "trained" and m["probe_random"]["encoder"] == "random init"
    assert (res.run_dir / "samples" / "final.png").is_file()  # the gallery, in place of samples
    main_fails_in_one_line(capsys, ["sample", str(res.run_dir), "--n", "4", "--out", str(tmp_path / "s.png")],
                           "draws no samples", "--metrics probe")
    main_fails_in_one_line(capsys, ["evaluate", str(res.run_dir), "--metrics", "fid", "--no-html"],
                           "cannot compute fid", "draws no samples")


def test_probe_of_a_vae_run_is_opt_in_and_reads_its_mu(tmp_path, data_root):
    from genlab.evaluation import evaluate
    from genlab.evaluation.images import applicable
    from genlab.evaluation.probe import probe_run

    res = genlab.train("vae-mnist", tmp_path / "vae", overrides=TINY_VAE + ["data.train_size=500"], steps=2,
                       data_root=str(data_root))
    m = evaluate(res.run_dir, metrics=["probe"], html=False, probe_labels=20, seed=3)["metrics"]
    assert m["probe"]["n"] == 20 and m["probe"]["seed"] == 3 and m["probe"]["layer"] == "mu"
    assert m["probe"]["features"] == 8  # TINY_VAE's latent_dim
    again = probe_run(res.run_dir, labels=20, seed=3)  # the Python entry the benchmark calls
    assert again["value"] == m["probe"]["value"]
    random = probe_run(res.run_dir, labels=20, seed=3, random_init=True)
    assert random["encoder"] == "random init" and 0.0 <= random["value"] <= 1.0
    run = genlab.load(res.run_dir)
    assert "probe" in applicable(run.model, "lenet-mnist", cfg=run.cfg)  # applies, but only when asked for
