"""The SMILES VAE: its loss terms against hand values, padding invariance, learning, sampling,
the one-molecule-a-row data mode, and latent interpolation between two molecules."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.errors import ConfigError, DataError
from tests.conftest import stop_at

pytest.importorskip("rdkit")
pytestmark = pytest.mark.usefixtures("one_thread")

from genlab.data import molecules as D  # noqa: E402
from genlab.models import smilesvae as S  # noqa: E402

FIVE = ["CCO", "c1ccccc1", "CC(=O)N", "OCCN", "C1CCNCC1"]
# a run small enough for a few steps in a test (the preset's data block, on a tiny .smi)
TINY_VAE = ["train.test_batches=2", "model.n_embd=8", "model.enc_hidden=16", "model.latent_dim=4", "model.dec_hidden=32",
            "model.dec_layers=1", "model.kl_warmup=4", "train.batch_size=4", "train.log_every=1",
            "train.eval_every=1000", "train.eval_batches=1", "train.sample_every=1000", "train.ckpt_every=1000",
            "train.warmup_steps=0", "data.val_size=2"]


def tokenizer(smiles=FIVE) -> D.MoleculeTokenizer:
    return D.MoleculeTokenizer.train("smiles", "\n".join(smiles))


def tiny_model(tok, **kw) -> S.SmilesVAE:
    torch.manual_seed(0)
    cfg = dict(vocab_size=tok.vocab_size, n_embd=8, enc_hidden=16, latent_dim=4, dec_hidden=32, dec_layers=1)
    return S.SmilesVAE(S.SmilesVAEConfig(**{**cfg, **kw}))


def batch_of(tok, smiles) -> dict[str, torch.Tensor]:
    return D.pad_molecules([tok.encode(s) for s in smiles], tok.stoi["\n"])


def write_smi(path, smiles):
    path.write_text("".join(s + "\n" for s in smiles))
    return path


# --------------------------------------------------------------------------- the loss


def test_kl_recon_and_weight_against_hand_values():
    # KL(N(mu, s^2) || N(0, 1)) = (s^2 + mu^2 - 1 - log s^2) / 2 per dimension
    kl = S.gaussian_kl(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(2.0)]]))
    assert kl.item() == pytest.approx(0.5 * (1 + 1 - 1) + 0.5 * (2 - 1 - math.log(2.0)))
    # token cross-entropy averaged over the unmasked positions only
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [-50.0, 50.0]]])  # (1, 3, 2)
    target, mask = torch.tensor([[1, 0, 0]]), torch.tensor([[True, True, False]])
    assert S.masked_token_ce(logits, target, mask).item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)
    w = dict(start=2, warmup=4, w_start=0.01, w_end=0.05)
    assert [S.kl_weight(s, **w) for s in (0, 2, 3, 6, 100)] == pytest.approx([0.01, 0.01, 0.02, 0.05, 0.05])
    assert S.kl_weight(0, start=0, warmup=0, w_start=0.0, w_end=0.05) == 0.05


def test_model_loss_is_the_token_ce_plus_weighted_kl_of_its_own_outputs():
    tok = tokenizer()
    m = tiny_model(tok).eval()
    b = batch_of(tok, ["CCO", "c1ccccc1"])
    # by hand: rows are "\n" + molecule + "\n" (padding: "\n"), 5 and 10 tokens long
    sep = tok.stoi["\n"]
    assert b["length"].tolist() == [5, 10] and b["x"][0].tolist() == [sep] + tok.encode("CCO") + [sep] * 6
    torch.manual_seed(1)
    out = m.loss({**b, "step": torch.tensor([1, 1])})
    torch.manual_seed(1)
    mu, logvar = m.encode(b["x"], b["length"])
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    logits, _ = m.decode_step(b["x"][:, :-1], z, m.initial_state(z))
    logp = logits.log_softmax(-1)
    # the 4 + 9 real next tokens (the end marker included), summed one by one
    nll = [-logp[i, t, b["x"][i, t + 1]] for i, n in enumerate((5, 10)) for t in range(n - 1)]
    assert out["recon"].item() == pytest.approx(torch.stack(nll).mean().item(), rel=1e-5)
    assert out["kl"].item() == pytest.approx(S.gaussian_kl(mu, logvar).mean().item(), rel=1e-5)
    w = S.kl_weight(1, start=0, warmup=1000, w_start=0.0, w_end=0.05)
    assert out["kl_weight"].item() == pytest.approx(w)
    assert out["loss"].item() == pytest.approx(out["recon"].item() + w * out["kl"].item(), rel=1e-5)
    torch.manual_seed(1)
    assert m.loss(b)["loss"].item() == pytest.approx(out["recon"].item() + 0.05 * out["kl"].item(), rel=1e-5)


def test_padding_does_not_change_the_loss():
    tok = tokenizer()
    m = tiny_model(tok, word_dropout=0.0).eval()
    b = batch_of(tok, ["CCO", "c1ccccc1", "OCCN"])
    wider = {"x": torch.cat([b["x"], torch.full((3, 7), tok.stoi["C"])], 1), "length": b["length"]}  # any pad value
    torch.manual_seed(2)
    a = m.loss(b)
    torch.manual_seed(2)
    c = m.loss(wider)
    assert {k: round(v.item(), 5) for k, v in a.items()} == {k: round(v.item(), 5) for k, v in c.items()}


def test_a_few_steps_lower_the_loss():
    tok = tokenizer()
    m = tiny_model(tok)
    b = batch_of(tok, FIVE)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    losses = []
    for i in range(30):
        torch.manual_seed(i)
        out = m.loss({**b, "step": torch.full((5,), i)})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0], losses


# --------------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def overfit():
    """A tiny VAE trained (KL weight 0.01) until its greedy decodes of the five molecules' means are the molecules."""
    torch.set_num_threads(1)
    tok = tokenizer()
    m = tiny_model(tok, latent_dim=8, dec_hidden=64)
    b = batch_of(tok, FIVE)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for i in range(300):
        torch.manual_seed(i)
        out = m.loss(b)  # validation weighting: the final KL weight
        opt.zero_grad()
        (out["recon"] + 0.01 * out["kl"]).backward()
        opt.step()
    return m.eval(), tok


def test_encode_decode_round_trip_of_an_overfitted_model(overfit):
    m, tok = overfit
    mu = m.encode_smiles(FIVE, tokenizer=tok)
    assert mu.shape == (5, 8)
    assert m.decode_latents(mu, tokenizer=tok, max_tokens=20) == FIVE


def test_sampling_is_reproducible_for_a_seed(overfit):
    m, tok = overfit
    a = m.sample_smiles(12, tokenizer=tok, seed=3, max_tokens=20, batch_size=5)
    assert len(a) == 12 and a == m.sample_smiles(12, tokenizer=tok, seed=3, max_tokens=20, batch_size=5)
    assert a != m.sample_smiles(12, tokenizer=tok, seed=4, max_tokens=20, batch_size=5)
    # a budget too short to reach the end marker leaves every molecule unfinished: ""
    assert m.sample_smiles(4, tokenizer=tok, seed=3, max_tokens=2, temperature=0.0) == [""] * 4
    # sample_molecules (genlab sample / evaluate) hands over to the model
    assert D.sample_molecules(m, tok, 12, seed=3, max_tokens=20, batch_size=5) == a


def test_interpolation_ends_are_the_inputs_of_an_overfitted_model(overfit):
    from genlab.apply.molecules import interpolate_molecules

    m, tok = overfit
    frames = interpolate_molecules(m, tok, smiles=["CCO", "c1ccccc1"], steps=6)
    assert len(frames) == 6 and frames[0] == "CCO" and frames[-1] == "c1ccccc1"


# --------------------------------------------------------------------------- data rows and a run


def test_config_takes_the_batches_from_the_model():
    from genlab.config import resolve

    assert resolve("smiles-vae-moses").data.batches == "molecules"
    assert resolve("smiles-gpt-moses").data.batches is None  # windows, as before
    with pytest.raises(ConfigError, match="smilesvae reads molecules\\): drop data.batches"):
        resolve("smiles-vae-moses", ["data.batches=windows"])
    with pytest.raises(ConfigError, match="gpt reads windows\\): drop data.batches"):
        resolve("smiles-gpt-moses", ["data.batches=molecules"])


def test_molecule_rows_serve_whole_molecules(tmp_path):
    from genlab.config import resolve
    from genlab.metrics.molecules import canonical

    smiles = [canonical(s) for s in FIVE * 2 + ["CCCCCCCCCCCCCCCCCCCCO"]]  # one molecule of 21 tokens
    path = write_smi(tmp_path / "m.smi", smiles)
    # aromatic SMILES (the preset's Kekule form would not decode to these canonical strings)
    cfg = resolve("smiles-vae-moses", [f"data.path={path}", "data.val_size=3", "data.kekulize=false"]).data
    data = D.load_molecule_data(cfg, None, block_size=20)
    assert isinstance(data, D.MoleculeRows) and data.unit == "molecules"
    sep = data.tokenizer.stoi["\n"]

    def rows(batch):
        return [data.tokenizer.decode(x[1:n - 1].tolist()) for x, n in zip(batch["x"], batch["length"])]

    # validation reads the val molecules in order; the 21-token one (block_size 20) is left out
    val = [s for s in data.val_smiles if len(data.tokenizer.encode(s)) <= 20]
    assert data.eval_size("val") == len(val) and data.num_eval_batches("val", 2) == -(-len(val) // 2)
    got = sum((rows(data.eval_batch("val", i, 2, "cpu")) for i in range(data.num_eval_batches("val", 2))), [])
    assert got == val
    torch.manual_seed(0)
    b = data.train_batch(7, 0, 6, "cpu")
    assert b["step"].tolist() == [7] * 6 and set(rows(b)) <= set(data.train_smiles)
    assert all(x[0] == sep and x[n - 1] == sep for x, n in zip(b["x"], b["length"]))
    # GPT/LSTM runs keep the windows of the token stream
    gpt = D.load_molecule_data(resolve("smiles-gpt-moses", [f"data.path={path}", "data.val_size=3"]).data, None,
                               block_size=8)
    assert type(gpt) is D.MoleculeData and gpt.train_batch(0, 0, 2, "cpu")["x"].shape == (2, 8)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import genlab
    from genlab.metrics.molecules import canonical

    base = tmp_path_factory.mktemp("svae")
    path = write_smi(base / "m.smi", [canonical(s) for s in FIVE * 2])
    with pytest.MonkeyPatch.context() as mp:  # module scope: before conftest's per-test cache folder
        mp.setenv("GENLAB_CACHE", str(base / "cache"))
        return genlab.train("smiles-vae-moses", base / "run", steps=3,
                            overrides=TINY_VAE + [f"data.path={path}"]).run_dir


def test_a_run_trains_with_the_kl_warm_up(tiny_run):
    import json

    logs = [json.loads(x) for x in (tiny_run / "logs" / "train.jsonl").read_text().splitlines()]
    train = [d for d in logs if d["kind"] == "train"]
    # steps 1..3 read batches 0..2: weights 0, 0.0125, 0.025 of the warm-up 0 -> 0.05 over 4 steps
    assert [round(d["kl_weight"], 6) for d in train] == [0.0, 0.0125, 0.025]
    assert all(math.isfinite(d["recon"]) and d["kl"] >= 0 for d in train)


def test_resumed_run_equals_uninterrupted(tmp_path):
    """The rows, the step stamps and hence the KL weights replay exactly after a resume."""
    import genlab
    from genlab.metrics.molecules import canonical
    from tests.conftest import assert_same_tensors, weights_of

    path = write_smi(tmp_path / "m.smi", [canonical(s) for s in FIVE * 2])
    common = {"overrides": TINY_VAE + [f"data.path={path}", "train.steps=6"]}
    genlab.train("smiles-vae-moses", tmp_path / "full", **common)

    part = genlab.train("smiles-vae-moses", tmp_path / "part", callbacks=[stop_at(3)], **common)
    assert not part.finished and part.state.step == 3
    assert genlab.train(resume=tmp_path / "part").state.step == 6
    assert_same_tensors(weights_of(tmp_path / "full"), weights_of(tmp_path / "part"), atol=0)


def test_a_prompt_is_refused_for_a_vae_run(tiny_run, capsys):
    from tests.conftest import main_fails_in_one_line

    main_fails_in_one_line(capsys, ["sample", str(tiny_run), "--prompt", "CC"], "smilesvae run", "drop --prompt")


def test_interpolate_errors_name_the_problem(tiny_run, tmp_path):
    from genlab.apply import apply

    out = tmp_path / "o.smi"
    for lines, match in ((["CCO"], "exactly 2 molecules, one a line; found 1"),
                         (["CCO", "CCN", "CCC"], "exactly 2 molecules, one a line; found 3"),
                         (["CCO", "C1CC"], "line 2: 'C1CC' is not a valid SMILES"),
                         (["CCO", "CC[Si]"], r"line 2: .*outside this run's .*'\[Si\]'")):
        with pytest.raises(DataError, match=match):
            apply(tiny_run, "interpolate", input=write_smi(tmp_path / "in.smi", lines), out=out)
    with pytest.raises(ConfigError, match="FILE.smi, FILE.txt or FILE.png"):
        apply(tiny_run, "interpolate", input=tmp_path / "in.smi", out=tmp_path / "o.npz")
    with pytest.raises(ConfigError, match="--mask is not an option of interpolate"):
        apply(tiny_run, "interpolate", input=tmp_path / "in.smi", out=out, mask="center")
    assert not out.exists()


def test_interpolate_writes_k_lines_from_the_greedy_decodes_of_the_means(tiny_run, tmp_path):
    import genlab
    from genlab.apply import apply
    from genlab.metrics.molecules import canonical

    out = apply(tiny_run, "interpolate", input=write_smi(tmp_path / "p.smi", ["OCCN", "C1=CC=CC=C1"]),
                out=tmp_path / "o.smi", steps=5)
    pair = [canonical("OCCN"), "c1ccccc1"]  # the inputs as the run reads them: canonical SMILES
    lines = out.read_text().split("\n")
    assert len(lines) == 6 and lines[-1] == ""
    run = genlab.load(tiny_run)
    ends = run.model.decode_latents(run.model.encode_smiles(pair, tokenizer=run.tokenizer), tokenizer=run.tokenizer,
                                    max_tokens=run.model.cfg.block_size + 1)
    assert [lines[0], lines[4]] == ends
    png = apply(tiny_run, "interpolate", input=None, seeds=[1, 2], out=tmp_path / "o.png", steps=3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_and_evaluate_a_vae_run(tiny_run, tmp_path):
    from genlab.cli import main

    assert main(["sample", str(tiny_run), "--n", "3", "--out", str(tmp_path / "m.smi"), "--seed", "1"]) == 0
    assert len((tmp_path / "m.smi").read_text().split("\n")) == 4
    assert main(["evaluate", str(tiny_run), "--n", "20", "--metrics", "validity", "unique_1k", "novelty"]) == 0
    import json

    metrics = json.loads((tiny_run / "report.json").read_text())["metrics"]
    assert metrics["validity"]["n"] == 20 and 0 <= metrics["validity"]["value"] <= 1
