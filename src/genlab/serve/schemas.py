"""Request and response models of `genlab serve`, with the bounds the HTTP API accepts.

JSON bodies are strict (no "5" for 5, no true for 1) and refuse unknown fields, so a typo in a
field name is a 422 naming it rather than a silently ignored option. Values inside these bounds
that genlab still refuses (sampling_steps above the run's T, a label the run does not have)
come back as 400 with genlab's message. The apply form is parsed from multipart fields, which
are strings, so it converts them ("3" -> 3) and ignores fields it does not know.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import UploadFile
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

SEED_MAX = 2**63 - 1
MAX_N = 256
MAX_PROMPT = 10_000
MAX_UPLOAD = 8 * 2**20  # bytes of one uploaded image or mask, and of a whole request body



def _integral(v):
    """JSON Schema counts 3.0 as an integer; strict pydantic does not: accept whole floats."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


Int = Annotated[int, BeforeValidator(_integral)]
ModelId = Annotated[str, Field(min_length=1, max_length=200, description="a model id from GET /v1/models")]
Seed = Annotated[Int, Field(ge=0, le=SEED_MAX, description="the request's random seed (same seed, same answer)")]
Sampler = Literal["ddpm", "ddim", "dpmpp"]
TASK_NAMES = ("inpaint", "denoise", "upscale", "interpolate", "edit", "translate", "style")
MASK_NAMES = ("center", "left-half", "bottom-half", "boxes")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class GenerateRequest(_Strict):
    model: ModelId
    n: Int = Field(16, ge=1, le=MAX_N, description="images (or graphs) to draw")
    seed: Seed = 0
    label: Int | None = Field(None, ge=0, description="conditional models: the class (default: all classes in turn)")
    sampler: Sampler | None = Field(None, description="diffusion: sampler (default the run's)")
    sampling_steps: Int | None = Field(None, ge=1, le=1000, description="diffusion: model evaluations (<= the run's T)")
    guidance: float | None = Field(None, ge=-20, le=20, description="conditional diffusion and WaveNet: classifier-free guidance w")
    eta: float | None = Field(None, ge=0, le=1, description="diffusion, ddim and dpmpp: noise per step (0 deterministic)")
    format: Literal["png", "npz", "json", "wav"] = Field(
        "png", description="png: one grid; npz: images uint8 N x C x H x W and labels; json: one PNG per image "
                           "(graph models answer json, their default). Audio models: wav (their default: the "
                           "clips in a row), npz (audio float32 N x T, sample_rate, labels), json (one WAV and "
                           "one spectrogram PNG per clip) or png (a grid of spectrograms)")


class TextRequest(_Strict):
    model: ModelId
    prompt: str = Field("\n", max_length=MAX_PROMPT, description="the text to continue")
    max_tokens: Int = Field(200, ge=0, le=2000)
    temperature: float = Field(1.0, ge=0, le=10, description="0 = greedy")
    top_k: Int | None = Field(None, ge=1, le=100_000)
    top_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    stop: str | None = Field(None, max_length=100, description="end the text before this string")
    seed: Seed = 0
    stream: bool = Field(False, description="answer as server-sent events, one per piece")

    @field_validator("prompt", "stop")
    @classmethod
    def _unicode(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("must be Unicode text (it holds a lone surrogate)") from None
        return v


class ApplyForm(BaseModel):
    """The multipart fields of POST /v1/apply/{task}, the `image` and `mask` files among them (one
    form model: FastAPI 0.138, which Flower pins, does not mix a form model with separate File
    parameters)."""

    model: ModelId
    image: UploadFile | None = Field(None, description=".png or .npz (images uint8 N x C x H x W), as "
                                                       "genlab apply --input")
    mask: UploadFile | None = Field(None, description="inpaint: PNG, white = fill")
    mask_name: Literal["center", "left-half", "bottom-half", "boxes"] | None = Field(
        None, description="inpaint: a named mask (default center when no mask file is sent)")
    sigma: float | None = Field(None, gt=0, le=100, description="denoise: noise std on the [0, 1] pixel scale")
    seed: Seed = 0
    steps: int | None = Field(None, ge=2, le=64, description="interpolate: frames per row, endpoints included")
    seeds: str | None = Field(None, pattern=r"^\s*\d{1,18}\s*,\s*\d{1,18}\s*$",
                              description="interpolate without an image: two seeds, 'A,B'")
    label: int | None = Field(None, ge=0, description="interpolate, edit: conditional models' class")
    strength: float | None = Field(None, ge=0, le=1, description="edit (SDEdit): how far the guide is noised "
                                                                  "(0 = the guide, 1 = ignores it; default 0.5)")
    direction: Literal["AtoB", "BtoA"] | None = Field(None, description="translate, CycleGAN runs (default AtoB)")
    sampling_steps: int | None = Field(None, ge=1, le=1000)
    guidance: float | None = Field(None, ge=-20, le=20)
    format: Literal["png", "npz"] = "png"

    def seed_pair(self) -> list[int] | None:
        return None if self.seeds is None else [int(s) for s in self.seeds.split(",")]


# --------------------------------------------------------------------------- responses


class Error(BaseModel):
    detail: str = Field(description="one line naming the field and the fix")


class Health(BaseModel):
    status: Literal["ok"]
    models: int


class ModelInfo(BaseModel):
    id: str
    family: Literal["image", "text", "graph", "audio"]
    model: str = Field(description="the model's name, e.g. vae, diffusion, gpt")
    preset: str | None
    conditional: bool
    num_classes: int | None
    tasks: list[str] = Field(description="generate, inpaint, denoise, upscale, interpolate, edit, translate, style "
                             "(image), text, or none")
    image_size: int | None
    channels: int | None
    sample_rate: int | None = Field(None, description="audio models: samples per second")
    audio_length: int | None = Field(None, description="audio models: samples per clip")
    step: int


class ModelList(BaseModel):
    models: list[ModelInfo]


class ImagesJSON(BaseModel):
    n: int
    shape: list[int] = Field(description="[N, C, H, W]")
    labels: list[int] | None
    images_png: list[str] = Field(description="one base64 PNG per image")


class AudioJSON(BaseModel):
    n: int
    sample_rate: int
    labels: list[int] | None
    audio_wav: list[str] = Field(description="one base64 16-bit WAV per clip")
    spectrograms_png: list[str] = Field(description="one base64 PNG of each clip's log-mel spectrogram")


class Graph(BaseModel):
    num_nodes: int
    edges: list[list[int]] = Field(description="undirected edges [i, j], i < j")


class GraphsJSON(BaseModel):
    graphs: list[Graph]


class TextResponse(BaseModel):
    text: str = Field(description="the prompt followed by the continuation")
