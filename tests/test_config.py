import pytest

from genlab.config import DataConfig, TrainConfig, load_config, parse_set, resolve, save_config
from genlab.errors import ConfigError
from genlab.models.vae import VAEConfig


def test_preset_resolves_to_typed_sections():
    cfg = resolve("vae-mnist")
    assert isinstance(cfg.model, VAEConfig) and isinstance(cfg.data, DataConfig)
    assert isinstance(cfg.train, TrainConfig)
    assert cfg.preset == "vae-mnist" and cfg.model_name == "vae"
    assert cfg.data.binarize and cfg.data.normalize == "zero_one"


def test_set_overrides_are_type_checked_and_repeatable():
    cfg = resolve("beta-vae-mnist", ["train.lr=3e-4", "model.beta=4", "train.betas=0.5,0.9",
                                     "train.amp=off", "train.grad_clip=null", "data.hflip=true"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.beta == 4.0 and isinstance(cfg.model.beta, float)
    assert cfg.train.betas == (0.5, 0.9)
    assert cfg.train.amp == "off"  # YAML 1.1 would have made this False
    assert cfg.train.grad_clip is None
    assert cfg.data.hflip is True


def test_later_overrides_win():
    assert resolve("vae-mnist", ["train.lr=0.1", "train.lr=0.2"]).train.lr == 0.2


@pytest.mark.parametrize("item, match", [
    ("train.lrr=1", r"unknown key train\.lrr \(did you mean: lr"),
    ("model.latent=4", r"unknown key model\.latent \(did you mean: latent_dim"),
    ("train.steps=abc", r"train\.steps expects an integer, got 'abc'"),
    ("train.steps=1.5", r"train\.steps expects an integer"),
    ("data.hflip=maybe", r"data\.hflip expects true/false"),
    ("train.optimizer=sgd", r"train\.optimizer must be adam, adamw or muon"),
    ("train.ema_warmup=1", r"train\.ema_warmup must be > 1, got 1"),
    ("trian.lr=1", r"unknown section 'trian' \(did you mean: train"),
    ("lr=1", r"section\.key"),
    ("train.lr", r"section\.key=value"),
    ("data.dataset=mnsit", r"did you mean: mnist"),
])
def test_bad_overrides_name_the_problem(item, match):
    with pytest.raises(ConfigError, match=match):
        resolve("vae-mnist", [item])


def test_unknown_preset_names_close_matches():
    with pytest.raises(ConfigError, match=r"unknown preset 'vae-mnst' \(did you mean: vae-mnist"):
        resolve("vae-mnst")


def test_yaml_file_extends_a_preset(tmp_path):
    p = tmp_path / "my.yaml"
    p.write_text("preset: cvae-mnist\nmodel:\n  latent_dim: 7\ntrain:\n  lr: 2e-4\n  amp: off\n")
    cfg = resolve(str(p), ["train.steps=5"])
    assert cfg.model.conditional and cfg.model.latent_dim == 7
    assert cfg.train.lr == pytest.approx(2e-4) and cfg.train.amp == "off" and cfg.train.steps == 5


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve(str(bad))
    noname = tmp_path / "noname.yaml"
    noname.write_text("train:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="no model.name"):
        resolve(str(noname))


def test_saved_config_round_trips(tmp_path):
    cfg = resolve("cvae-mnist", ["train.betas=0.5,0.99", "model.latent_dim=3"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_parse_set_nests():
    assert parse_set(["a.b=1", "a.c=x", "d.e=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": {"e": [1, 2]}}
