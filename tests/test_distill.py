"""genlab.compress.distill: a smaller student GPT trained on a teacher GPT's soft targets."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch

import genlab
from genlab.compress import compress
from genlab.compress.distill import Student, init_from_teacher, soft_target_loss
from genlab.engine import checkpoint as ckpt
from genlab.errors import ConfigError
from genlab.models.autoregressive.gpt import GPT, GPTConfig
from tests.conftest import shakespeare_corpus
from tests.test_text import TINY_TEXT

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- the loss


def _log_softmax(z: list[float]) -> list[float]:
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def test_soft_target_loss_matches_hand_computation():
    s = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]  # student logits, 2 positions x 3 tokens
    t = [[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]  # teacher logits
    y = [0, 2]
    T, alpha = 2.0, 0.3
    kls, ces = [], []
    for zs, zt, yi in zip(s, t, y):
        ls, lt = _log_softmax([v / T for v in zs]), _log_softmax([v / T for v in zt])
        kls.append(sum(math.exp(a) * (a - b) for a, b in zip(lt, ls)))  # KL(teacher || student)
        ces.append(-_log_softmax(zs)[yi])  # cross-entropy at T = 1
    kd, ce = T * T * sum(kls) / 2, sum(ces) / 2
    out = soft_target_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), T, alpha)  # (1, 2, 3)
    assert out["kd"].item() == pytest.approx(kd, rel=1e-6)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert out["loss"].item() == pytest.approx(alpha * kd + (1 - alpha) * ce, rel=1e-6)
    # the ends of the mix, and no soft-target loss when the student is the teacher
    one = soft_target_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), T, 1.0)
    zero = soft_target_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), T, 0.0)
    assert one["loss"].item() == pytest.approx(kd, rel=1e-6) and zero["loss"].item() == pytest.approx(ce, rel=1e-6)
    assert soft_target_loss(torch.tensor(t), torch.tensor(t), torch.tensor(y), T)["kd"].item() == pytest.approx(0, abs=1e-7)


def _gpt(n_layer: int, n_embd: int, n_head: int = 2) -> GPT:
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=0.0))


def test_student_holds_only_its_own_weights_and_learns_from_the_teacher():
    torch.manual_seed(0)
    teacher = _gpt(2, 16)
    student = Student(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=0.0),
                      teacher, temperature=2.0, alpha=0.5)
    assert set(student.state_dict()) == set(_gpt(1, 8).state_dict())  # a plain GPT's keys
    assert {id(p) for p in student.parameters()}.isdisjoint(id(p) for p in teacher.parameters())
    assert copy.deepcopy(student).teacher is teacher  # the engine's EMA copy shares the frozen teacher
    student.train()
    assert not teacher.training
    x = torch.randint(0, 11, (2, 8))
    batch = {"x": x, "y": torch.roll(x, -1, 1)}
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    first = None
    for _ in range(15):  # the loss falls on a fixed batch; the teacher gets no gradient
        out = student.loss(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else out["loss"].item()
    assert out["loss"].item() < 0.8 * first and all(p.grad is None for p in teacher.parameters())
    student.eval()
    ev = student.loss(batch)
    with torch.no_grad():  # validation reports the plain cross-entropy, as a GPT run does
        ce = torch.nn.functional.cross_entropy(student(x).flatten(0, 1), batch["y"].flatten())
    assert ev["loss"].item() == pytest.approx(ce.item())
    assert set(ev) == {"loss", "kd"}


def test_init_from_teacher_takes_evenly_spaced_blocks():
    torch.manual_seed(0)
    teacher, student = _gpt(4, 16), _gpt(2, 16)
    assert init_from_teacher(student, teacher) == [0, 2]
    assert torch.equal(student.blocks[1].mlp.c_fc.weight, teacher.blocks[2].mlp.c_fc.weight)
    assert torch.equal(student.wte.weight, teacher.wte.weight)
    assert init_from_teacher(_gpt(1, 8), teacher) is None  # another width: fresh init


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny GPT teacher (1 layer, width 16, 20 steps), its distilled student (width 8, 20
    steps) and a tiny LSTM run (a non-GPT teacher)."""
    root = tmp_path_factory.mktemp("distill")
    corpus = shakespeare_corpus(root)
    teacher = genlab.train("gpt-shakespeare-cpu", root / "teacher", steps=20,
                           overrides=TINY_TEXT + [f"data.path={corpus}"]).run_dir
    student = compress(teacher, "distill", root / "student", n_layer=1, n_embd=8, n_head=2, steps=20,
                       temperature=2.0, alpha=0.5)
    lstm = genlab.train("lstm-shakespeare", root / "lstm", steps=2, overrides=[
        o for o in TINY_TEXT if not o.startswith(("model.n_head", "model.n_embd"))] + [
        "model.n_embd=16", "model.hidden=16", f"data.path={corpus}"]).run_dir
    return {"teacher": teacher, "student": student, "lstm": lstm, "root": root}


def test_distilled_run_loads_generates_and_is_smaller(runs):
    t, s = genlab.load(runs["teacher"]), genlab.load(runs["student"])
    assert s.cfg.model_name == "gpt" and (s.cfg.model.n_layer, s.cfg.model.n_embd, s.cfg.model.n_head) == (1, 8, 2)
    assert type(s.model) is GPT and s.step == 20
    n = lambda run: sum(p.numel() for p in run.model.parameters())  # noqa: E731
    assert n(s) < n(t)
    text = "".join(s.generate("ROMEO:", 20, seed=0))
    assert len(text) == 20 and text == "".join(s.generate("ROMEO:", 20, seed=0))
    assert (runs["student"] / "tokenizer.json").read_text() == (runs["teacher"] / "tokenizer.json").read_text()


def test_student_loss_falls_and_record_names_the_teacher(runs):
    rec = json.loads((runs["student"] / "compression.json").read_text())
    assert rec["method"] == "distill"
    assert rec["teacher"]["run"] == str(runs["teacher"].resolve()) == rec["source"]["run"]
    assert rec["options"] == {"n_layer": 1, "n_embd": 8, "n_head": 2, "steps": 20, "temperature": 2.0, "alpha": 0.5}
    assert rec["student"]["params"] < rec["teacher"]["params"] and rec["student"]["init"] == "random"
    losses = rec["train_loss"]  # logged every 5 steps
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    logged = [json.loads(line) for line in (runs["student"] / "logs" / "train.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in logged if r["kind"] == "train"] == losses
    assert {"kd", "ce"} <= set(next(r for r in logged if r["kind"] == "train"))


def test_student_checkpoint_holds_no_teacher_tensors(runs):
    folder = runs["student"] / "checkpoints"
    c = ckpt.read_checkpoint(folder, ckpt.list_steps(folder)[-1])
    want = {f"model.{k}": v.shape for k, v in _gpt(1, 8).state_dict().items() if not k.startswith("wpe")}
    model = {k: v.shape for k, v in c.tensors.items() if k.startswith("model.") and not k.startswith("model.wpe")}
    assert model.keys() == want.keys()
    assert all(model[k][1:] == want[k][1:] for k in want)  # width 8 everywhere (vocab rows differ)
    assert all(k.split(".")[0] in ("model", "optim") for k in c.tensors)
    assert not any("teacher" in k for k in c.tensors)
    teacher_bytes = ckpt.tensor_file(runs["teacher"] / "checkpoints", "step-00000020").stat().st_size
    assert ckpt.tensor_file(folder, c.name).stat().st_size < teacher_bytes


@pytest.mark.parametrize("options, match", [
    ({"n_embd": 8, "depth": 2}, r"does not take depth"),
    ({"n_embd": 10, "n_head": 3}, r"--n-embd 10 must be divisible by --n-head 3"),
    ({"n_embd": 8, "alpha": 1.5}, r"--alpha must be in 0\.\.1"),
    ({"n_embd": 8, "temperature": 0}, r"--temperature must be > 0"),
    ({}, r"must be smaller than the teacher"),  # default: 1 layer (half of 1), same width
])
def test_options_are_checked(runs, options, match, tmp_path):
    with pytest.raises(ConfigError, match=match) as e:
        compress(runs["teacher"], "distill", tmp_path / "out", steps=1, **options)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_non_gpt_teacher_is_refused(runs, tmp_path):
    with pytest.raises(ConfigError, match=r"needs a gpt teacher run; .* is a lstm run") as e:
        compress(runs["lstm"], "distill", tmp_path / "out", steps=1)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_student_of_a_shrunk_teacher_takes_its_own_head_and_mlp_sizes():
    # a shrunk teacher records head_size / mlp_hidden; a narrower student must not inherit them
    from genlab.compress.distill import student_config
    from genlab.config import resolve

    t = resolve("gpt-shakespeare-cpu", ["model.n_embd=64", "model.n_head=4", "model.head_size=8",
                                        "model.mlp_hidden=96"])
    same = student_config(t, 1, 64, 4, steps=10).model
    assert (same.head_size, same.mlp_hidden) == (8, 96)
    other_heads = student_config(t, 1, 64, 2, steps=10).model
    assert (other_heads.head_dim, other_heads.mlp_hidden) == (32, 96)
    narrower = student_config(t, 1, 32, 4, steps=10).model
    assert (narrower.head_dim, narrower.mlp_dim) == (8, 128)
    GPT(dataclasses.replace(narrower, vocab_size=65))  # builds at the student's own shape
