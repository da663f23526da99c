import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from torch import nn

from genlab.audio import (
    concat_with_gaps,
    fit_length,
    linear_decode,
    linear_encode,
    mel_filterbank,
    mu_law_decode,
    mu_law_encode,
    read_wav,
    spectrogram_grid_png,
    spectrogram_images,
)
from genlab.config import DataConfig
from genlab.data.audio import load_audio_data
from genlab.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def tone(n: int, freq: float, sr: int = 8000, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


def write(path, x, sr=8000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype="PCM_16")
    return path


def labelled_folder(tmp_path, classes=3, per=4, n=600):
    """classes x per clips, each a different tone, in one sub-folder per class."""
    for c in range(classes):
        for i in range(per):
            write(tmp_path / "clips" / f"class{c}" / f"{i}.wav", tone(n, 200 + 100 * c + 17 * i))
    return tmp_path / "clips"


def cfg(**kw) -> DataConfig:
    base = {"dataset": "audio", "val_size": 0, "test_size": 0, "audio_length": 512}
    return DataConfig(**{**base, **kw})


# --------------------------------------------------------------------------- FSDD


@pytest.fixture(scope="module")
def fsdd():
    from tests.conftest import DATA

    if DATA is None or not (DATA / "fsdd" / "recordings").is_dir():
        pytest.fail("../shared/data with fsdd/recordings is required beside the project (or set GENLAB_DATA)")
    return DATA, load_audio_data(DataConfig(dataset="fsdd", val_size=0.1), DATA, seed=0)


def test_fsdd_splits_are_the_official_ones(fsdd):
    _, d = fsdd
    assert (len(d.train_x), len(d.val_x), len(d.test_x)) == (2430, 270, 300)
    index = {s: [int(f[:-4].split("_")[2]) for f in d.files[s]] for s in ("train", "val", "test")}
    assert sorted(set(index["test"])) == [0, 1, 2, 3, 4]
    assert min(index["train"] + index["val"]) == 5
    assert not set(d.files["train"]) & set(d.files["val"])
    assert len(set(d.files["train"]) | set(d.files["val"]) | set(d.files["test"])) == 3000
    for s in ("train", "val", "test"):  # labels and speakers are the file names'
        y = getattr(d, f"{s}_y")
        assert y.tolist() == [int(f[0]) for f in d.files[s]]
        assert d.speakers[s] == [f.split("_")[1] for f in d.files[s]]
    assert torch.bincount(d.val_y).tolist() == [27] * 10  # stratified
    assert d.num_classes == 10 and d.class_names[3] == "3" and d.sample_rate == 8000


def test_fsdd_shapes_masks_and_range(fsdd):
    root, d = fsdd
    assert d.train_x.shape == (2430, 1, 5120) and d.train_x.dtype == torch.float32
    assert d.test_mask.shape == (300, 5120) and d.test_mask.dtype == torch.bool
    assert d.train_y.dtype == torch.int64
    assert d.train_x.abs().max() <= 1 and d.train_x.abs().max() > 0.5
    i = d.files["test"].index("0_george_0.wav")
    wav, _ = read_wav(root / "fsdd" / "recordings" / "0_george_0.wav")
    assert len(wav) == 2384
    m, x = d.test_mask[i], d.test_x[i, 0]
    start = (5120 - 2384) // 2
    assert m.sum() == 2384 and m[start:start + 2384].all()
    assert torch.equal(x[start:start + 2384], torch.from_numpy(wav)) and (x[~m] == 0).all()
    meta = json.loads(json.dumps(d.meta()))
    assert meta["sizes"] == {"train": 2430, "val": 270, "test": 300} and meta["audio_length"] == 5120


def test_fsdd_errors(fsdd, tmp_path):
    root, _ = fsdd
    with pytest.raises(ConfigError, match=r"data.val_size=5000 .* 2700 .*data.val_size=0.1"):
        load_audio_data(DataConfig(dataset="fsdd"), root)
    with pytest.raises(DataError, match=r"fsdd/recordings.*--data-root.*GENLAB_DATA"):
        load_audio_data(DataConfig(dataset="fsdd", val_size=0.1), tmp_path)


# --------------------------------------------------------------------------- folders


def test_class_folders_give_labels_and_flat_folders_none(tmp_path):
    folder = labelled_folder(tmp_path)
    (folder / "class1" / "notes.txt").write_text("not audio")  # ignored
    d = load_audio_data(cfg(path=str(folder), test_size=3, val_size=3), None, seed=1)
    assert d.class_names == ["class0", "class1", "class2"] and d.num_classes == 3
    assert (len(d.train_x), len(d.val_x), len(d.test_x)) == (6, 3, 3)
    for s in ("train", "val", "test"):
        assert getattr(d, f"{s}_y").tolist() == [int(f.split("/")[0][-1]) for f in d.files[s]]
    assert sorted(d.val_y.tolist()) == [0, 1, 2] and sorted(d.test_y.tolist()) == [0, 1, 2]  # stratified
    again = load_audio_data(cfg(path=str(folder), test_size=3, val_size=3), None, seed=1)
    assert again.files == d.files

    for i in range(3):
        write(tmp_path / "flat" / f"{i}.flac", tone(300, 300 + 50 * i))
    flat = load_audio_data(cfg(path="flat"), tmp_path)  # relative to the root
    assert flat.train_y is None and flat.num_classes is None and len(flat.train_x) == 3
    assert json.loads(json.dumps(flat.meta()))["num_classes"] is None
    assert "y" not in flat.feeder(None, 2, 0).train_batch(0, 0, 2, "cpu")


def test_mixed_rates_need_sample_rate(tmp_path):
    write(tmp_path / "a.wav", tone(4000, 440, 8000), 8000)
    write(tmp_path / "b.wav", tone(8000, 440, 16000), 16000)  # 0.5 s at 16 kHz
    with pytest.raises(DataError, match=r"a\.wav is 8000 Hz but .*b\.wav is 16000 Hz; set data.sample_rate"):
        load_audio_data(cfg(path=str(tmp_path), audio_length=5120), None)
    d = load_audio_data(cfg(path=str(tmp_path), audio_length=5120, sample_rate=8000), None)
    assert d.sample_rate == 8000 and d.files["train"] == ["a.wav", "b.wav"]
    assert d.train_mask.sum(1).tolist() == [4000, 4000]
    assert d.train_x.abs().max() <= 1


def test_long_clip_is_centre_cropped(tmp_path):
    ramp = np.linspace(-0.9, 0.9, 1000, dtype=np.float32)
    write(tmp_path / "long.wav", ramp)
    d = load_audio_data(cfg(path=str(tmp_path), audio_length=400), None)
    assert d.train_mask.all()
    assert np.allclose(d.train_x[0, 0].numpy(), ramp[300:700], atol=1 / 32768)
    x, m = fit_length(np.ones(3), 6)
    assert m.tolist() == [False, True, True, True, False, False] and x.sum() == 3


@pytest.mark.parametrize("bad", ["stereo", "empty", "text"])
def test_unreadable_files_are_named(tmp_path, bad):
    write(tmp_path / "good.wav", tone(500, 300))
    if bad == "stereo":
        write(tmp_path / "x.wav", np.zeros((500, 2), np.float32))
    elif bad == "empty":
        write(tmp_path / "x.wav", np.zeros(0, np.float32))
    else:
        (tmp_path / "x.wav").write_text("hello, not a recording")
    with pytest.raises(DataError, match=r"x\.wav") as e:
        load_audio_data(cfg(path=str(tmp_path)), None)
    assert "\n" not in str(e.value)


def test_folder_errors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no audio files"):
        load_audio_data(cfg(path=str(tmp_path / "docs")), None)
    with pytest.raises(DataError, match="audio folder .*nowhere not found"):
        load_audio_data(cfg(path="nowhere"), tmp_path)
    write(tmp_path / "two" / "a.wav", tone(100, 300))
    write(tmp_path / "two" / "b.wav", tone(100, 300))
    with pytest.raises(ConfigError, match=r"data.test_size=2 "):
        load_audio_data(cfg(path=str(tmp_path / "two"), test_size=2), None)


def test_empty_class_folder_is_an_error(tmp_path):
    folder = labelled_folder(tmp_path, classes=2, per=2)
    (folder / "class9").mkdir()  # a class without recordings: it must not count in num_classes
    (folder / "class9" / "notes.txt").write_text("not audio")
    with pytest.raises(DataError, match=r"class folder .*class9 holds no audio files") as e:
        load_audio_data(cfg(path=str(folder)), None)
    assert "\n" not in str(e.value)
    (folder / "class9" / "notes.txt").unlink()
    (folder / "class8").mkdir()
    with pytest.raises(DataError, match=r"class folder .*class8 \(and 1 more\) holds no audio files"):
        load_audio_data(cfg(path=str(folder)), None)
    (folder / "class8").rmdir()
    (folder / "class9").rmdir()
    assert load_audio_data(cfg(path=str(folder)), None).num_classes == 2


# --------------------------------------------------------------------------- feeder


def test_feeder_batches_are_seeded_and_shards_disjoint(tmp_path):
    d = load_audio_data(cfg(path=str(labelled_folder(tmp_path))), None)
    f1, f2 = d.feeder(None, 8, seed=3), d.feeder(None, 8, seed=3)
    assert f1.unit == "samples" and f1.per_example == 512
    b = f1.train_batch(2, 0, 8, "cpu")
    assert b["x"].shape == (8, 1, 512) and b["mask"].shape == (8, 512) and b["y"].dtype == torch.int64
    assert all(torch.equal(b[k], f2.train_batch(2, 0, 8, "cpu")[k]) for k in b)
    s0, s1 = f1.train_batch(2, 0, 4, "cpu"), f1.train_batch(2, 1, 4, "cpu")
    assert torch.equal(torch.cat([s0["x"], s1["x"]]), b["x"])
    assert not any(torch.equal(a, c) for a in s0["x"] for c in s1["x"])  # every clip differs
    assert not torch.equal(f1.train_batch(0, 0, 8, "cpu")["x"], f1.train_batch(1, 0, 8, "cpu")["x"])
    assert f1.num_eval_batches("train", 5) == 3 and f1.eval_batch("train", 2, 5, "cpu")["x"].shape[0] == 2


class FakeAudioModel(nn.Module):
    family, conditional, num_classes = "audio", True, 3

    def __init__(self, length: int):
        super().__init__()
        self.length = length
        self.w = nn.Parameter(torch.zeros(1))

    def sample(self, n, *, generator, labels):
        t = torch.arange(self.length) / 8000
        noise = 0.01 * torch.randn(n, 1, self.length, generator=generator)
        return 0.5 * torch.sin(2 * torch.pi * (300 + 200 * labels.view(n, 1, 1)) * t) + noise  # (n, 1, T)


def test_write_samples_png_and_wav(tmp_path):
    d = load_audio_data(cfg(path=str(labelled_folder(tmp_path))), None)
    d.feeder(None, 4, 0).write_samples(FakeAudioModel(512), tmp_path / "out", "step1", seed=0)
    wav, sr = sf.read(str(tmp_path / "out" / "step1.wav"))
    assert sr == 8000 and len(wav) == 3 * 512 + 2 * 2000
    assert np.abs(wav[512:2512]).max() == 0 and np.abs(wav[:512]).max() > 0.4
    png = Image.open(tmp_path / "out" / "step1.png")
    assert png.size == (3 * (512 // 64 + 1 + 2) + 2, 64 + 4)  # one row of three 64-mel spectrograms
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_clip_helpers():
    clips = torch.zeros(2, 1, 100)
    assert len(concat_with_gaps(clips, 1000, gap_s=0.01)) == 210
    one = concat_with_gaps(torch.ones(3, 5), 100)
    assert one.tolist() == [1.0] * 5 + [0.0] * 25 + [1.0] * 5 + [0.0] * 25 + [1.0] * 5
    im = Image.open(io.BytesIO(spectrogram_grid_png(torch.rand(4, 1024) - 0.5, 8000, nrow=2)))
    assert im.mode == "RGB" and im.size[1] > 2 * 64
    # what the grid shows: [a 1 kHz tone, silence] side by side (pad 2, 1024 // 64 + 1 = 17 frames each)
    clips = torch.stack([torch.from_numpy(tone(1024, 1000)), torch.zeros(1024)])
    grid = np.asarray(Image.open(io.BytesIO(spectrogram_grid_png(clips, 8000, nrow=2))))
    assert grid.shape == (2 + 64 + 2, 2 + 2 * (17 + 2), 3)
    loud, silent = grid[2:66, 2:19], grid[2:66, 21:38]
    assert torch.equal(torch.from_numpy(loud.copy()).permute(2, 0, 1), spectrogram_images(clips[:1], 8000)[0])
    assert (silent == VIRIDIS_DARK).all()
    assert loud[..., 1].mean(1).argmax() == 63 - mel_band(1000)  # the tone's band, low frequencies at the bottom


# viridis at 0 and 1 as uint8 RGB: the darkest and brightest colours of the spectrogram pictures;
# viridis's green channel never falls from one to the other (its top two colours share it): a brightness
VIRIDIS_DARK, VIRIDIS_BRIGHT = (68, 1, 84), (253, 231, 37)


def mel_band(freq: float, sr: int = 8000, n_fft: int = 256) -> int:
    """The mel filter (of log_mel's 64) that collects the most of a tone at `freq`, an FFT bin
    centre: the Hann window spreads it over bins k-1, k, k+1 with powers 1/4, 1, 1/4."""
    k = round(freq * n_fft / sr)
    fb = mel_filterbank(sr, n_fft, 64)
    return int((0.25 * fb[:, k - 1] + fb[:, k] + 0.25 * fb[:, k + 1]).argmax())


def test_spectrogram_silence_is_dark_and_loud_peaks_bright():
    pics = spectrogram_images(torch.stack([torch.zeros(2048), torch.from_numpy(tone(2048, 1000, amp=0.9)),
                                           torch.from_numpy(tone(2048, 1000, amp=0.9 / 3000))]), 8000)
    assert pics.shape == (3, 3, 64, 2048 // 64 + 1) and pics.dtype == torch.uint8
    dark, bright = torch.tensor(VIRIDIS_DARK).view(3, 1, 1), torch.tensor(VIRIDIS_BRIGHT).view(3, 1, 1)
    assert (pics[0] == dark).all()  # silence: all dark (it used to be scaled to its own peak: all bright)
    green = pics[:, 1]  # (3, 64, frames) brightness
    top = (pics[1] == bright).all(0)  # (64, frames): pixels in the brightest colour
    assert top.any() and top.float().mean() < 0.2  # a loud tone's peak is drawn brightest, and only the peak
    # a 70 dB quieter copy is drawn 70 dB down the 80 dB scale, not at full brightness
    assert VIRIDIS_DARK[1] < green[2].max() < 0.5 * green[1].max()
    # the brightest row is the tone's mel band; a higher tone is higher up (low frequencies at the bottom)
    for freq in (500, 1000, 2500):
        g = spectrogram_images(torch.from_numpy(tone(2048, freq))[None], 8000)[0, 1]  # (64, frames)
        assert int(g.float().mean(1).argmax()) == 63 - mel_band(freq)
    assert mel_band(500) < mel_band(1000) < mel_band(2500)


def test_mu_law_round_trip():
    q = torch.arange(256)
    assert torch.equal(mu_law_encode(mu_law_decode(q)), q)
    x = torch.linspace(-1, 1, 20001)
    compand = (lambda v: torch.sign(v) * torch.log1p(255 * v.abs()) / np.log1p(255))
    err = (compand(mu_law_decode(mu_law_encode(x))) - compand(x)).abs()
    assert err.max() <= 1 / 255 + 1e-6  # within half a quantisation step (2/255) in companded units
    assert (mu_law_decode(mu_law_encode(x)) - x).abs().max() < 0.025


@pytest.mark.parametrize("bins", [256, 16, 2])
def test_linear_round_trip(bins):
    q = torch.arange(bins)
    centres = linear_decode(q, bins)
    assert torch.equal(linear_encode(centres, bins), q)
    assert torch.allclose(centres, -1 + (2 * q + 1) / bins)  # bin centres, evenly spaced
    x = torch.linspace(-1, 1, 20001)
    code = linear_encode(x, bins)
    assert code.dtype == torch.int64 and int(code.min()) == 0 and int(code.max()) == bins - 1
    assert (torch.diff(code) >= 0).all()  # monotone
    assert (linear_decode(code, bins) - x).abs().max() <= 1 / bins + 1e-6  # within half a bin (2 / bins)
    counts = torch.bincount(code, minlength=bins)  # uniform: evenly spaced inputs fill every bin alike
    assert (counts - 20000 / bins).abs().max() <= 2
    assert torch.equal(linear_encode(torch.tensor([-5.0, 5.0]), bins), torch.tensor([0, bins - 1]))  # clipped
