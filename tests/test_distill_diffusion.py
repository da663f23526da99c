"""genlab.compress.distill_diffusion: progressive distillation of a diffusion sampler."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import genlab
from genlab.compress import compress
from genlab.compress.distill_diffusion import (Student, ab_at, ddim_x0_target, distill_diffusion_run, stage_grid,
                                               teacher_steps)
from genlab.engine import checkpoint as ckpt
from genlab.errors import ConfigError, DataError
from genlab.models.diffusion import schedules as sch
from genlab.models.diffusion.ddpm import Diffusion, DiffusionConfig, ddim_step
from tests.test_diffusion import TINY_DIFFUSION, small_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

T = 50


def _model(**kw) -> Diffusion:
    cfg = DiffusionConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(),
                          heads=2, groups=4, timesteps=T, channels=1, image_size=8, patch=1, **kw)
    return Diffusion(cfg)


class _ScaledInput(torch.nn.Module):
    """A known network: output = c * x_t, whatever the step and label."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c

    def forward(self, x, t, y):
        return self.c * x


# --------------------------------------------------------------------------- the maths


def test_stage_grid_takes_every_rth_step_of_the_finer_grid():
    # timesteps(50, 4) = [49, 37, 24, 11] (round half to even), timesteps(50, 2) = [49, 24]
    assert stage_grid(_model(), 2).tolist() == [[49, 24], [37, 11], [24, -1]]
    assert stage_grid(_model(), 1).tolist() == [[49], [24], [-1]]
    assert stage_grid(_model(), 1, substeps=4).tolist() == [[49], [37], [24], [11], [-1]]


@pytest.mark.parametrize("r", [2, 3])
def test_target_is_where_r_teacher_ddim_steps_land_hand_computed(r):
    c = 0.3
    teacher = _model(prediction="v", clip_denoised=None)
    teacher.net = _ScaledInput(c)
    ab = teacher.alpha_bar.tolist()
    z_t = torch.tensor([0.7, -1.2, 0.4]).view(3, 1, 1, 1).expand(3, 1, 8, 8).contiguous()
    fine = [49, 40, 30, 20, 11, -1]
    path = torch.tensor([fine[i:i + r + 1] for i in range(3)]).T  # (r + 1, 3): a path per example
    t, s = path[0], path[-1]

    def hand(z: float, steps: list[int]) -> tuple[float, float]:
        """r DDIM steps of the v = c z teacher, with floats; then the x0 of one step to s."""
        z0 = z
        for a, b in zip(steps[:-1], steps[1:]):
            at, st = math.sqrt(ab[a]), math.sqrt(1 - ab[a])
            x0, eps = at * z - st * c * z, st * z + at * c * z  # v -> (x0, eps)
            ab_b = 1.0 if b < 0 else ab[b]
            z = math.sqrt(ab_b) * x0 + math.sqrt(1 - ab_b) * eps
        ab_t, ab_s = ab[steps[0]], 1.0 if steps[-1] < 0 else ab[steps[-1]]
        ratio = math.sqrt((1 - ab_s) / (1 - ab_t))
        return z, (z - ratio * z0) / (math.sqrt(ab_s) - ratio * math.sqrt(ab_t))

    z_s = teacher_steps(teacher, z_t, path, None, 1.0)
    target = ddim_x0_target(z_t, z_s, teacher.alpha_bar[t], ab_at(teacher.alpha_bar, s))
    for i in range(3):
        want_z, want_x0 = hand(z_t[i, 0, 0, 0].item(), path[:, i].tolist())
        assert z_s[i].flatten().tolist() == pytest.approx([want_z] * 64, rel=1e-5)
        assert target[i].flatten().tolist() == pytest.approx([want_x0] * 64, rel=1e-5)
        # round trip: the student's one DDIM step (ddpm.ddim_step) from z_t with that x0 lands on z_s
        ab_t, ab_s = ab[t[i]], 1.0 if s[i] < 0 else ab[s[i]]
        eps = (z_t[i] - math.sqrt(ab_t) * target[i]) / math.sqrt(1 - ab_t)
        landed = ddim_step(target[i], eps, ab_t, ab_s, 0.0, None)
        assert torch.allclose(landed, z_s[i], atol=1e-5)


def test_two_steps_equal_the_teachers_own_ddim_sampler_with_clipping():
    torch.manual_seed(0)
    teacher = _model().eval()  # a random UNet, x0 clipped to [-1, 1]
    z = torch.randn(3, 1, 8, 8)
    path = stage_grid(teacher, 1, 4).expand(-1, 3)  # (5, 3): 49 -> 37 -> 24 -> 11 -> clean
    want = teacher.sample_from(z, T - 1, steps=4, sampler="ddim")
    assert torch.allclose(teacher_steps(teacher, z, path, None, 1.0), want, atol=1e-5)


def test_loss_is_the_v_mse_against_the_target_for_a_v_student():
    torch.manual_seed(0)
    teacher = _model()
    student = Student(dataclasses.replace(teacher.cfg, sampling_steps=2), teacher)
    student.load_state_dict(teacher.state_dict())
    batch = {"x": torch.rand(4, 1, 8, 8) * 2 - 1}
    torch.manual_seed(1)
    out = student.loss(batch)
    torch.manual_seed(1)  # the same draws, by hand: step index, then noise
    i = torch.randint(0, 2, (4,))
    path = student.grid[:, i]
    t, s = path[0], path[-1]
    z_t = sch.q_sample(batch["x"], t, teacher.alpha_bar, torch.randn_like(batch["x"]))
    ab_t = teacher.alpha_bar[t]
    ab_s = torch.where(s >= 0, teacher.alpha_bar[s.clamp(min=0)], torch.ones_like(ab_t))
    x0 = ddim_x0_target(z_t, teacher_steps(teacher, z_t, path, None, 1.0), ab_t, ab_s)
    eps = (z_t - ab_t.sqrt().float().view(-1, 1, 1, 1) * x0) / (1 - ab_t).sqrt().float().view(-1, 1, 1, 1)
    v_target = sch.from_x0_eps(x0, eps, ab_t, "v")
    with torch.no_grad():
        v = student.net(z_t, t, None)
    assert out["loss"].item() == pytest.approx((v - v_target).pow(2).mean().item(), rel=1e-4)
    assert out["loss"].item() > 0  # the student starts as the teacher: one step is not two
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is frozen and separate


def test_conditional_student_distils_guided_labels_and_keeps_the_unconditional_pass():
    torch.manual_seed(0)
    teacher = _model(conditional=True, num_classes=3, label_dropout=0.5)
    student = Student(dataclasses.replace(teacher.cfg, sampling_steps=1), teacher, guidance=3.0)
    z = torch.randn(2, 1, 8, 8)
    path = student.grid.expand(-1, 2)  # (3, 2)
    null = student._null(2, z.device)
    # "no label" rows: the guided teacher is its unconditional self (u + w (u - u))
    assert torch.allclose(teacher_steps(teacher, z, path, null, 3.0), teacher_steps(teacher, z, path, None, 1.0),
                          atol=1e-6)
    out = student.loss({"x": torch.rand(6, 1, 8, 8) * 2 - 1, "y": torch.tensor([0, 1, 2, 0, 1, 2])})
    assert torch.isfinite(out["loss"]) and set(out) == {"loss", "x0_mse"}


# --------------------------------------------------------------------------- a distilled run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    """A tiny 16x16 teacher (30 steps) and a student distilled 4 -> 2 -> 1 DDIM steps (2 stages)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the function-scoped one_thread
    base = tmp_path_factory.mktemp("pd")
    teacher = genlab.train("ddpm-mnist", base / "teacher", overrides=TINY_DIFFUSION + small_mnist(base, data_root),
                           steps=30, data_root=str(data_root)).run_dir
    student = compress(teacher, "distill", base / "student", steps=10, sampling_steps=1, stages=2, substeps=2,
                       lr=2e-3, batch_size=16)
    torch.set_num_threads(n)
    return {"teacher": teacher, "student": student, "base": base}


def test_student_run_loads_and_samples_with_its_few_steps_by_default(runs):
    s = genlab.load(runs["student"])
    assert type(s.model) is Diffusion and s.step == 10
    assert (s.cfg.model.sampler, s.cfg.model.sampling_steps, s.cfg.model.eta) == ("ddim", 1, 0.0)
    images, _ = s.sample(3, seed=0)
    assert images.shape == (3, 1, 16, 16) and images.dtype == torch.uint8
    assert torch.equal(images, s.sample(3, seed=0, sampler="ddim", steps=1)[0])
    assert not torch.equal(images, s.sample(3, seed=0, sampler="ddim", steps=2)[0])
    c = s.checkpoint
    want = {f"model.{k}" for k in s.model.state_dict()}
    assert {k for k in c.tensors if k.startswith("model.")} == want
    assert all(k.split(".")[0] in ("model", "ema", "optim") for k in c.tensors)


def test_each_stage_halves_the_steps_and_the_record_names_the_teacher(runs):
    rec = json.loads((runs["student"] / "compression.json").read_text())
    assert rec["method"] == "distill" and rec["teacher"]["run"] == str(runs["teacher"].resolve())
    assert [(x["teacher_steps"], x["student_steps"]) for x in rec["stages"]] == [(4, 2), (2, 1)]
    assert rec["teacher"]["sampling_steps"] == 4 and rec["student"] == {"sampler": "ddim", "sampling_steps": 1}
    assert rec["options"] == {"steps": 10, "sampling_steps": 1, "stages": 2, "substeps": 2, "lr": 2e-3,
                              "batch_size": 16, "guidance": 1.0}
    for k, x in enumerate(rec["stages"], start=1):  # TINY_DIFFUSION logs every step
        assert len(x["train_loss"]) == 10
        logged = (runs["student"] / "logs" / f"distill-stage-{k}.jsonl").read_text().splitlines()
        assert [json.loads(r)["loss"] for r in logged if json.loads(r)["kind"] == "train"] == x["train_loss"]


def test_student_gets_closer_to_two_teacher_steps_than_the_teacher_at_one(runs):
    teacher = genlab.load(runs["teacher"]).model
    torch.manual_seed(0)
    student = Student(dataclasses.replace(teacher.cfg, sampling_steps=1), teacher)  # one step for two
    student.load_state_dict(teacher.state_dict())
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    x = torch.rand(16, 1, 16, 16) * 2 - 1  # one step from pure noise: the images barely matter
    losses = []
    for _ in range(40):
        out = student.loss({"x": x})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses
    z = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    ref = teacher.sample_from(z, T - 1, steps=2, sampler="ddim")  # what the student learns to match
    mse = lambda a: (a - ref).pow(2).mean().item()  # noqa: E731
    fast_teacher = mse(teacher.sample_from(z, T - 1, steps=1, sampler="ddim"))
    distilled = mse(student.eval().sample_from(z, T - 1, steps=1, sampler="ddim"))
    assert distilled < 0.6 * fast_teacher, (distilled, fast_teacher)


@pytest.mark.parametrize("options, match", [
    ({"guidance": 2.0}, r"--guidance needs a class-conditional diffusion run"),
    ({"sampling_steps": 4, "stages": 2, "substeps": 4}, r"4 x 4\^2 stages = 64 teacher steps exceeds the run's 50"),
    ({"substeps": 1}, r"--substeps must be >= 2"),
    ({"n_layer": 2, "alpha": 0.1}, r"--n-layer, --alpha are for gpt students"),
    ({"lr": 0}, r"--lr must be > 0"),
])
def test_options_are_checked(runs, options, match, tmp_path):
    with pytest.raises(ConfigError, match=match) as e:
        compress(runs["teacher"], "distill", tmp_path / "out", steps=1, **options)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_eps_teacher_is_refused(runs):
    run = genlab.load(runs["teacher"])
    run.cfg = dataclasses.replace(run.cfg, model=dataclasses.replace(run.cfg.model, prediction="eps"))
    with pytest.raises(ConfigError, match=r"predicts eps, which cannot give x0 .* model.prediction=v"):
        distill_diffusion_run(run, steps=1)


def test_a_teacher_whose_data_is_missing_is_refused_not_switched_to_other_data(runs, tmp_path):
    # MNIST absent: a new run would fall back to the 8x8 digits; a student must not learn from them
    run = genlab.load(runs["teacher"])
    run.cfg = dataclasses.replace(run.cfg, data=dataclasses.replace(run.cfg.data, dataset="mnist", path=None))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="mnist"):
        distill_diffusion_run(run, steps=1, sampling_steps=1, stages=1, data_root=tmp_path / "empty")


def test_resuming_a_distilled_sampler_is_refused(runs, capsys):
    from tests.conftest import main_fails_in_one_line

    before = sorted(p.name for p in (runs["student"] / "checkpoints").iterdir())
    main_fails_in_one_line(capsys, ["train", "--resume", str(runs["student"]), "--steps", "20"],
                           "is a distilled 1-step sampler, which ordinary training would undo")
    assert sorted(p.name for p in (runs["student"] / "checkpoints").iterdir()) == before


def test_gpt_teacher_refuses_diffusion_options(tmp_path):
    from types import SimpleNamespace

    from genlab.compress.distill import distill_run

    gpt = SimpleNamespace(cfg=SimpleNamespace(model_name="gpt"), run_dir="runs/gpt")
    with pytest.raises(ConfigError, match=r"--sampling-steps, --stages are for diffusion students"):
        distill_run(gpt, sampling_steps=4, stages=2)


def test_student_checkpoint_is_a_plain_diffusion_checkpoint(runs):
    folder = runs["student"] / "checkpoints"
    c = ckpt.read_checkpoint(folder, ckpt.list_steps(folder)[-1])
    assert c.state["compression"]["method"] == "distill"
    assert not any("teacher" in k or "grid" in k for k in c.tensors)


def test_cli_passes_the_diffusion_flags(runs, capsys, tmp_path):
    from tests.conftest import main_fails_in_one_line

    out = str(tmp_path / "out")
    main_fails_in_one_line(capsys, ["compress", str(runs["teacher"]), "--method", "distill", "--out", out,
                                    "--sampling-steps", "4", "--stages", "2", "--substeps", "4"],
                           "4 x 4^2 stages = 64 teacher steps", "lower --stages or --substeps")
    main_fails_in_one_line(capsys, ["compress", str(runs["teacher"]), "--method", "distill", "--out", out,
                                    "--lr", "0.001", "--batch-size", "8", "--guidance", "2"],
                           "--guidance needs a class-conditional diffusion run")
