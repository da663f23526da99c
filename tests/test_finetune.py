"""Fine-tuning (genlab.finetune): --init-from, train.freeze, LoRA adapters."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import genlab
from genlab.config import resolve
from genlab.engine.checkpoint import latest_valid
from genlab.engine.run import build_model
from genlab.errors import CheckpointError, ConfigError
from genlab.finetune import apply_freeze, checkpoint_keys, load_matching
from genlab.finetune.lora import LoRAConv2d, LoRALinear, add_lora, merge_lora
from tests.conftest import TINY_VAE, assert_same_tensors, main_fails_in_one_line, weights_of

pytestmark = pytest.mark.usefixtures("one_thread")

IMG = ["model.channels=1", "model.image_size=28"]


def vae(*extra: str, classes: int = 10) -> nn.Module:
    torch.manual_seed(len(extra) + classes)
    return build_model(resolve("cvae-mnist", [*TINY_VAE, *IMG, f"model.num_classes={classes}", *extra]))


# --------------------------------------------------------------------------- init-from


def test_load_matching_loads_every_fitting_tensor_and_reports_the_rest():
    src, dst = vae(), vae("model.latent_dim=4")
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    sd = {**src.state_dict(), "only.in.source": torch.zeros(3)}
    r = load_matching(dst, sd, 10, 10)
    own = dst.state_dict()
    mismatched = {k for k, _, _ in r["mismatched"]}
    assert set(r["loaded"]) | mismatched | set(r["new"]) == set(own)
    assert mismatched and r["loaded"] and r["unused"] == ["only.in.source"]
    for k in r["loaded"]:
        assert torch.equal(own[k], sd[k]), k
    for k in mismatched:  # another shape: the new model's own initialisation stays
        assert sd[k].shape != own[k].shape and torch.equal(own[k], before[k]), k


def test_new_classes_keep_the_old_rows_and_the_no_class_row_stays_last():
    src, dst = vae(classes=10), vae(classes=12)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    r = load_matching(dst, src.state_dict(), 10, 12)
    grown = dict(r["grown"])
    # the one-hot label columns of the first encoder and decoder layers (the new classes come last)
    assert set(grown) == {"encoder.body.0.weight", "decoder.net.0.weight"}
    for k in grown:
        new, old = dst.state_dict()[k], src.state_dict()[k]
        assert torch.equal(new[:, :old.shape[1]], old) and torch.equal(new[:, old.shape[1]:], before[k][:, -2:])
    # classifier-free guidance keeps a "no class" row after the classes (10 + 1 rows -> 12 + 1)
    emb_src, emb_dst = nn.Embedding(11, 4), nn.Embedding(13, 4)
    keep = emb_dst.weight.detach().clone()
    r = load_matching(emb_dst, emb_src.state_dict(), 10, 12)
    w = emb_dst.weight.detach()
    assert r["grown"] == [("weight", [11, 4])]
    assert torch.equal(w[:10], emb_src.weight[:10]) and torch.equal(w[12], emb_src.weight[10])
    assert torch.equal(w[10:12], keep[10:12])
    # the same 10 classes into a model that adds the "no class" row (guidance): the class rows load
    emb_src, emb_dst = nn.Embedding(10, 4), nn.Embedding(11, 4)
    keep = emb_dst.weight.detach().clone()
    assert load_matching(emb_dst, emb_src.state_dict(), 10, 10)["grown"] == [("weight", [10, 4])]
    assert torch.equal(emb_dst.weight[:10], emb_src.weight) and torch.equal(emb_dst.weight[10], keep[10])


def test_init_from_run_freezes_and_records_its_source(tmp_path, data_root):
    base = genlab.train("cvae-mnist", tmp_path / "base", overrides=TINY_VAE, steps=6, data_root=str(data_root))
    start = latest_valid(base.run_dir / "checkpoints")
    ft = genlab.train("cvae-mnist", tmp_path / "ft", steps=4, data_root=str(data_root),
                      overrides=TINY_VAE + [f"train.init_from={base.run_dir}", "data.dataset=fashion-mnist",
                                            "train.freeze=[encoder]"])
    init = json.loads((ft.run_dir / "init.json").read_text())
    assert init["source"]["sha256"] == start.state["sha256"] and init["source"]["weights"] == "ema"
    assert init["new"] == [] and init["mismatched"] == [] and len(init["loaded"]) > 4
    w = weights_of(ft.run_dir)
    enc = [k for k in w if k.startswith("model.encoder.")]
    dec = [k for k in w if k.startswith("model.decoder.")]
    assert enc and dec
    for k in enc:  # frozen: still the base's (EMA) weights after 4 steps
        assert torch.equal(w[k], start.tensors["ema." + k[len("model."):]]), k
    assert any(not torch.equal(w[k], start.tensors["ema." + k[len("model."):]]) for k in dec)
    assert not any(k.startswith("optim.") and ".encoder." in k for k in w)


def test_init_from_errors(tmp_path, data_root, capsys):
    src = vae()
    with pytest.raises(ConfigError, match="no parameter of this model is under 'encodr'.*encoder"):
        apply_freeze(src, ("encodr",))
    with pytest.raises(ConfigError, match="nothing left to train"):
        genlab.train("cvae-mnist", tmp_path / "all", overrides=TINY_VAE + ["train.freeze=[encoder, decoder]"],
                     steps=1, data_root=str(data_root))
    with pytest.raises(ConfigError, match="set train.init_from"):
        resolve("cvae-mnist", ["train.lora_rank=4"])
    main_fails_in_one_line(capsys, ["train", "cvae-mnist", "--init-from", str(tmp_path / "nothing"), "--steps", "1"],
                           "train.init_from", "not found")
    main_fails_in_one_line(capsys, ["train", "--resume", str(tmp_path / "x"), "--init-from", str(tmp_path)],
                           "--init-from cannot change a run being resumed")


# --------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("layer", [nn.Linear(6, 5), nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1),
                                   nn.Conv2d(3, 4, 3, padding=2, dilation=2, padding_mode="reflect")])
def test_lora_starts_equal_to_its_base_and_merges_exactly(layer):
    torch.manual_seed(0)
    x = torch.randn(2, 6) if isinstance(layer, nn.Linear) else torch.randn(2, 3, 9, 9)
    ref = layer(x).detach()
    model = nn.Sequential(layer)
    assert add_lora(model, rank=2, alpha=4.0) == ["0"]
    wrapped = model[0]
    assert isinstance(wrapped, (LoRALinear, LoRAConv2d))
    assert torch.equal(model(x), ref)  # B = 0: exactly the base layer
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["0.lora_A", "0.lora_B"]
    with torch.no_grad():
        wrapped.lora_B.normal_()
    adapted = model(x).detach()
    assert (adapted - ref).abs().max() > 1e-2
    adapted_weight = wrapped.weight.detach().clone()  # code that reads .weight sees the adaptation
    merged = merge_lora(model)
    assert torch.equal(merged[0].weight, adapted_weight)
    assert type(merged[0]) is type(layer)
    torch.testing.assert_close(merged(x), adapted, atol=1e-5, rtol=1e-5)


def test_lora_run_checkpoint_holds_only_adapters_and_loads_merged(tmp_path, data_root):
    base = genlab.train("cvae-mnist", tmp_path / "base", overrides=TINY_VAE, steps=4, data_root=str(data_root))
    lora = genlab.train("cvae-mnist", tmp_path / "lora", steps=4, data_root=str(data_root),
                        overrides=TINY_VAE + [f"train.init_from={base.run_dir}", "train.lora_rank=2",
                                              "train.lora_alpha=4"])
    w = weights_of(lora.run_dir)
    model_keys = {k[len("model."):] for k in w if k.startswith("model.")}
    assert model_keys and all(".lora_" in k for k in model_keys), model_keys
    base_w = weights_of(base.run_dir)
    assert sum(v.numel() for k, v in w.items() if k.startswith("model.")) < \
        sum(v.numel() for k, v in base_w.items() if k.startswith("model.")) / 4

    # loading = the base's EMA weights plus scale * B·A of the run's EMA adapters
    run = genlab.load(lora.run_dir)
    assert not any("lora" in n for n, _ in run.model.named_parameters())
    ref = genlab.load(base.run_dir).model.state_dict()
    k = "decoder.net.0.weight"
    a, b = w["ema.decoder.net.0.lora_A"], w["ema.decoder.net.0.lora_B"]
    torch.testing.assert_close(run.model.state_dict()[k], ref[k] + 2.0 * b @ a, atol=1e-6, rtol=1e-6)
    assert not torch.equal(run.model.state_dict()[k], ref[k])

    # the base is pinned to the checkpoint the adapters were trained on: still there after one
    # more session of the base run (it keeps its last 2), gone after two
    genlab.train(resume=base.run_dir, steps=8)
    torch.testing.assert_close(genlab.load(lora.run_dir).model.state_dict()[k], run.model.state_dict()[k])
    genlab.train(resume=base.run_dir, steps=12)
    with pytest.raises(CheckpointError, match="base run of this fine-tuned run.*step-00000004"):
        genlab.load(lora.run_dir)


def test_checkpoint_keys_of_a_plain_model_is_everything():
    m = vae()
    assert checkpoint_keys(m) is None
    add_lora(m, rank=1)
    keys = checkpoint_keys(m)
    assert keys and all(".lora_" in k for k in keys)


def test_resumed_lora_run_equals_an_uninterrupted_one(tmp_path, data_root):
    base = genlab.train("cvae-mnist", tmp_path / "base", overrides=TINY_VAE, steps=3, data_root=str(data_root))
    over = TINY_VAE + [f"train.init_from={base.run_dir}", "train.lora_rank=2", "train.steps=6"]
    genlab.train("cvae-mnist", tmp_path / "whole", overrides=over, data_root=str(data_root))
    genlab.train("cvae-mnist", tmp_path / "split", overrides=over, steps=3, data_root=str(data_root))
    genlab.train(resume=tmp_path / "split", steps=6)
    whole, split = weights_of(tmp_path / "whole"), weights_of(tmp_path / "split")
    assert any(k.startswith("optim.") for k in whole)
    assert_same_tensors(whole, split)


# --------------------------------------------------------------------------- incremental data


def _write_pngs(folder, x, y, start):
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y)):
        d = folder / str(int(label))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(d / f"{start + i:05d}.png")


def test_replay_trains_on_the_new_images_and_a_share_of_the_seen_ones(tmp_path, data_root):
    import numpy as np

    from genlab.config import DataConfig
    from genlab.data.datasets import load_image_data
    from genlab.finetune.replay import image_hashes

    d = load_image_data(DataConfig(dataset="mnist"), data_root)
    keep = d.test_y < 2
    x, y = d.test_x[keep][:300], d.test_y[keep][:300]
    folder = tmp_path / "digits"
    _write_pngs(folder, x[:200], y[:200], 0)
    over = ["model.hidden=32", "model.latent_dim=4", "train.batch_size=16", "train.amp=off", "data.dataset=folder",
            f"data.path={folder}", "data.val_size=0.1", "train.eval_batches=1", "train.sample_every=1000"]
    old = genlab.train("cvae-mnist", tmp_path / "old", overrides=over, steps=2).run_dir
    seen = np.load(old / "train-hashes.npy")
    assert len(seen) == json.loads((old / "data.json").read_text())["sizes"]["train"]

    _write_pngs(folder, x[200:], y[200:], 200)  # the folder grows by 100 images
    new = genlab.train("cvae-mnist", tmp_path / "new", steps=2,
                       overrides=over + [f"train.init_from={old}", "train.replay=0.25"]).run_dir
    grown = load_image_data(DataConfig(dataset="folder", path=str(folder), val_size=0.1), None)
    h = image_hashes(grown.train_x)
    n_new = int((~np.isin(h, seen)).sum())
    assert 80 < n_new < 140  # ~90% of the 100 added, and old held-out images the split now puts in train
    n_train = json.loads((new / "data.json").read_text())["sizes"]["train"]
    assert n_train == n_new + round(0.25 / 0.75 * n_new)  # every new image, and a quarter old ones
    # the next increment knows everything this lineage saw
    lineage = set(np.load(new / "train-hashes.npy").tolist())
    assert set(seen.tolist()) <= lineage and set(h[~np.isin(h, seen)].tolist()) <= lineage

    import shutil

    shutil.rmtree(old)  # the replay choice is kept in the new run: it resumes without its source
    genlab.train(resume=new, steps=3)
    assert json.loads((new / "data.json").read_text())["sizes"]["train"] == n_train
    with pytest.raises(ConfigError, match="nothing new to learn"):
        genlab.train("cvae-mnist", tmp_path / "again", steps=1, overrides=over + [f"train.init_from={new}",
                                                                                 "train.replay=0.25"])
    assert not (tmp_path / "again" / "replay-indices.npy").exists()
    with pytest.raises(ConfigError, match="set train.init_from"):
        resolve("cvae-mnist", ["train.replay=0.3"])


def test_merge_writes_a_standalone_run_equal_to_the_adapted_one(tmp_path, data_root):
    from genlab.compress import compress

    base = genlab.train("cvae-mnist", tmp_path / "base", overrides=TINY_VAE, steps=3, data_root=str(data_root))
    lora = genlab.train("cvae-mnist", tmp_path / "lora", steps=3, data_root=str(data_root),
                        overrides=TINY_VAE + [f"train.init_from={base.run_dir}", "train.lora_rank=2"]).run_dir
    merged = compress(lora, "merge", tmp_path / "merged")
    a, b = genlab.load(lora), genlab.load(merged)
    assert b.cfg.train.lora_rank == 0
    assert_same_tensors(a.model.state_dict(), b.model.state_dict(), atol=0)
    import shutil

    shutil.rmtree(base.run_dir)  # the merged run no longer needs its base; the adapters alone do
    torch.testing.assert_close(genlab.load(merged).sample(4, seed=1)[0], a.sample(4, seed=1)[0])
    with pytest.raises(CheckpointError, match="base run"):
        genlab.load(lora)
    with pytest.raises(ConfigError, match="no LoRA adapters"):
        compress(merged, "merge", tmp_path / "again")


def test_text_fine_tuning_keeps_the_source_vocabulary(tmp_path):
    from genlab.errors import DataError
    from tests.conftest import shakespeare_corpus
    from tests.test_text import TINY_TEXT

    corpus = shakespeare_corpus(tmp_path)
    base = genlab.train("gpt-shakespeare-cpu", tmp_path / "base", overrides=TINY_TEXT + [f"data.path={corpus}"],
                        steps=2).run_dir
    text = corpus.read_text()
    mine = tmp_path / "mine.txt"
    mine.write_text("".join(sorted(set(text)))[:12] * 40)  # a user's text in fewer characters
    ft = genlab.train("gpt-shakespeare-cpu", tmp_path / "ft", steps=2,
                      overrides=TINY_TEXT + [f"data.path={mine}", f"train.init_from={base}"]).run_dir
    assert (ft / "tokenizer.json").read_text() == (base / "tokenizer.json").read_text()
    init = json.loads((ft / "init.json").read_text())
    assert init["new"] == [] and init["mismatched"] == []  # the embedding and head fit the vocabulary
    other = tmp_path / "other.txt"
    other.write_text("ü" * 500)
    with pytest.raises(DataError, match="outside this run's"):
        genlab.train("gpt-shakespeare-cpu", tmp_path / "bad", steps=1,
                     overrides=TINY_TEXT + [f"data.path={other}", f"train.init_from={base}"])


def test_lora_skips_tied_weights_and_saves_what_did_not_come_from_the_base(tmp_path, data_root):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.mid, self.head = nn.Embedding(5, 4), nn.Linear(4, 4), nn.Linear(4, 5, bias=False)
            self.head.weight = self.embed.weight  # merging into it would change the embedding too

    assert add_lora(Tied(), rank=1) == ["mid"]

    base = genlab.train("cvae-mnist", tmp_path / "base", overrides=TINY_VAE, steps=2, data_root=str(data_root))
    lora = genlab.train("cvae-mnist", tmp_path / "lora", steps=2, data_root=str(data_root),
                        overrides=TINY_VAE + [f"train.init_from={base.run_dir}", "train.lora_rank=2",
                                              "model.latent_dim=4"]).run_dir  # the encoder head: another shape
    saved = {k[len("model."):] for k in weights_of(lora) if k.startswith("model.")}
    assert "encoder.head.base.weight" in saved and "encoder.body.0.base.weight" not in saved
    a, b = genlab.load(lora).model.state_dict(), genlab.load(lora).model.state_dict()
    assert_same_tensors(a, b, atol=0)  # nothing of the loaded model is left to a fresh random draw
    with pytest.raises(ConfigError, match="private training does not support semi-supervised"):
        resolve("semi-vae-mnist", ["privacy.epsilon=3"])
