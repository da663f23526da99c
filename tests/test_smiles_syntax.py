"""The SMILES grammar mask used by `--smiles-syntax`: it allows every token of real molecules,
and tokens drawn under it (from random logits, a GPT run, a VAE) always form complete SMILES."""

from __future__ import annotations

import pytest
import torch

from genlab.errors import ConfigError
from tests.conftest import DATA

pytest.importorskip("rdkit")
pytestmark = pytest.mark.usefixtures("one_thread")

from rdkit import Chem, RDLogger  # noqa: E402

from genlab.data import molecules as D  # noqa: E402
from genlab.data.smiles_syntax import SmilesSyntax  # noqa: E402
from genlab.models.autoregressive.generation import SamplingConfig, next_token  # noqa: E402
from tests.test_molecules import moses_test_smiles  # noqa: E402

RDLogger.DisableLog("rdApp.*")
# syntax the mask must allow beyond MOSES: a branch after a ring digit, a ring bond order, a
# charged bracket atom, stereo bonds, two-digit rings, a disconnected salt
EXTRA = ["CC1(C)CC1", "C=1CCCCC1", "C[N+](C)(C)C", "F/C=C/F", "C%10CCCCC%10", "[Na+].[Cl-]", "c1ccc2c(c1)cccc2",
         "CC(C)(C)C(=O)O"]


def parses(smiles: str) -> bool:
    """Whether RDKit reads the string as SMILES syntax (no valence or aromaticity checks)."""
    return Chem.MolFromSmiles(smiles, sanitize=False) is not None


def feed(tok, smiles: list[str]) -> list[bool]:
    """Feeds each molecule (then "\\n") through the mask token by token; per molecule, whether
    every one of its tokens was allowed where it came."""
    rows = [tok.encode(s) + [tok.stoi["\n"]] for s in smiles]
    syntax = SmilesSyntax(tok, len(rows))
    ok = torch.ones(len(rows), dtype=torch.bool)
    for t in range(max(map(len, rows))):
        live = torch.tensor([t < len(r) for r in rows])
        nxt = torch.tensor([r[t] if t < len(r) else tok.stoi["C"] for r in rows])
        allowed = syntax.mask()[torch.arange(len(rows)), nxt]
        ok &= allowed | ~live
        syntax.update(nxt)
    return ok.tolist()


@pytest.mark.skipif(DATA is None, reason="needs GENLAB_DATA")
def test_the_mask_allows_every_token_of_real_molecules():
    smiles = moses_test_smiles()[::20] + EXTRA  # 8,804 MOSES test molecules
    tok = D.MoleculeTokenizer.train("smiles", "\n".join(smiles))
    assert all(feed(tok, smiles))
    # and forbids what breaks the grammar: unclosed branch or ring, dangling bond, ")" first,
    # an empty branch, a ring closed on its own atom, a ring digit after a branch
    bad = ["CC(C", "C1CC", "CC=", ")C", "C()C", "C11", "C(C)1CC1", "=C", "C(=)C"]
    assert not any(feed(tok, bad))


def test_sampling_under_the_mask_from_random_logits_gives_complete_smiles():
    tok = D.MoleculeTokenizer.train("smiles", "\n".join(EXTRA + ["CC#N", "O=S(=O)(N)c1ccccc1Br", "C[C@@H](O)Cl"]))
    g = torch.Generator().manual_seed(0)
    B, sep = 400, tok.stoi["\n"]

    def draw(constrained: bool) -> list[str]:
        syntax = SmilesSyntax(tok, B)
        out, end = [], torch.full((B,), -1)
        for k in range(60):
            logits = torch.randn(B, tok.vocab_size, generator=g)
            t = next_token(logits, torch.zeros(B, 0, dtype=torch.long), SamplingConfig(), g,
                           syntax if constrained else None)
            out.append(t[:, 0])
            end = torch.where((end < 0) & (t[:, 0] == sep), k, end)
        ids = torch.stack(out, 1).tolist()
        return [tok.decode(r[:e]) for r, e in zip(ids, end.tolist()) if e >= 0]

    free, held = draw(False), draw(True)
    assert len(held) > 50  # a quarter of the rows end within 60 tokens
    assert all(parses(s) for s in held), [s for s in held if not parses(s)][:5]
    assert sum(map(parses, free)) < 0.2 * len(free)  # without the mask random tokens rarely parse


def test_smiles_syntax_through_a_vae_and_errors(tmp_path):
    from genlab.models import smilesvae as S

    tok = D.MoleculeTokenizer.train("smiles", "\n".join(EXTRA))
    torch.manual_seed(0)
    m = S.SmilesVAE(S.SmilesVAEConfig(vocab_size=tok.vocab_size, n_embd=8, enc_hidden=16, latent_dim=4,
                                      dec_hidden=32, dec_layers=1))
    free = D.sample_molecules(m, tok, 200, seed=1, max_tokens=40)
    held = D.sample_molecules(m, tok, 200, seed=1, max_tokens=40, smiles_syntax=True)
    assert all(parses(s) for s in held if s) and sum(bool(s) for s in held) > 20
    assert sum(parses(s) for s in free if s) < sum(parses(s) for s in held if s)  # an untrained model: noise
    with pytest.raises(ConfigError, match="SELFIES string is a valid molecule"):
        SmilesSyntax(D.MoleculeTokenizer("selfies", ["[C]", "\n"]), 2)
    with pytest.raises(ConfigError, match="graph generator"):
        D.sample_molecules(m, None, 2, smiles_syntax=True)


def test_smiles_syntax_is_refused_for_an_image_run(capsys, tmp_path):
    from tests.conftest import main_fails_in_one_line

    main_fails_in_one_line(capsys, ["sample", "demo:cvae-mnist", "--smiles-syntax", "--out", str(tmp_path / "s.png")],
                           "--smiles-syntax is for SMILES runs", "cvae")


def kekule(smiles: list[str]) -> list[str]:
    return [D.kekule_smiles(s) for s in smiles]


def valid(smiles: str) -> bool:
    """Whether RDKit reads the string as a molecule (syntax, valences, aromaticity)."""
    return Chem.MolFromSmiles(smiles) is not None


@pytest.mark.skipif(DATA is None, reason="needs GENLAB_DATA")
def test_the_valence_mask_allows_every_token_of_real_kekule_molecules():
    smiles = kekule(moses_test_smiles()[::20] + EXTRA)
    tok = D.MoleculeTokenizer.train("smiles", "\n".join(smiles), kekulize=True)
    assert SmilesSyntax(tok, 1).valence  # on for a Kekule run by default
    assert all(feed(tok, smiles))


def test_the_valence_mask_forbids_overfull_atoms():
    good = kekule(EXTRA) + ["O=C=O", "C#N", "FC(F)(F)F", "C1=CC=CC=C1", "O=S(=O)(O)O", "C=1CCCCC1", "CN1CC1"]
    bad = ["CC(C)(C)(C)C",  # carbon with five bonds
           "CN(C)(C)C",  # neutral nitrogen with four
           "CC(=O)(=O)C",  # carbon with six
           "C#N=C",  # nitrogen with five
           "FF(C)",  # fluorine with two
           "C1CO1(C)",  # oxygen: two ring bonds, then a third
           "O=C1CC=1C",  # ring closed with a double bond onto a carbon that has three already
           "C=1CCCC1=O"]  # a double bond left after the ring's
    tok = D.MoleculeTokenizer.train("smiles", "\n".join(good + bad), kekulize=True)
    assert all(feed(tok, good))
    assert not any(feed(tok, bad)), [s for s, ok in zip(bad, feed(tok, bad)) if ok]
    # the grammar alone lets them through (they are complete SMILES)
    plain = D.MoleculeTokenizer.train("smiles", "\n".join(good + bad))
    assert all(feed(plain, bad))


def test_sampling_under_the_valence_mask_from_random_logits_gives_valid_molecules():
    tok = D.MoleculeTokenizer.train("smiles", "\n".join(kekule(EXTRA[:5] + ["CC#N", "O=S(=O)(N)c1ccccc1Br"])),
                                    kekulize=True)
    g = torch.Generator().manual_seed(0)
    B, sep = 400, tok.stoi["\n"]

    def draw(valence: bool) -> list[str]:
        syntax = SmilesSyntax(tok, B, valence=valence)
        out, end = [], torch.full((B,), -1)
        for k in range(60):
            t = next_token(torch.randn(B, tok.vocab_size, generator=g), torch.zeros(B, 0, dtype=torch.long),
                           SamplingConfig(), g, syntax)
            out.append(t[:, 0])
            end = torch.where((end < 0) & (t[:, 0] == sep), k, end)
        ids = torch.stack(out, 1).tolist()
        return [tok.decode(r[:e]) for r, e in zip(ids, end.tolist()) if e >= 0]

    grammar, held = draw(False), draw(True)
    assert len(held) > 50
    assert sum(map(valid, held)) >= 0.98 * len(held), [s for s in held if not valid(s)][:5]
    assert sum(map(valid, grammar)) < 0.8 * len(grammar)  # the grammar alone: many overfull atoms
