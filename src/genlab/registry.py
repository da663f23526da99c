"""The model registry: a dict from name to (ConfigCls, ModelCls), filled by `register()`
calls in `genlab.models`. No import-time scanning: `genlab.models` imports each model file."""

from __future__ import annotations

from genlab.config import close_matches
from genlab.errors import ConfigError

MODELS: dict[str, tuple[type, type]] = {}


def register(name: str, config_cls: type, model_cls: type) -> None:
    """Add a model family; a duplicate name is a programming error."""
    if name in MODELS:
        raise ValueError(f"model {name!r} is already registered")
    MODELS[name] = (config_cls, model_cls)


def get_model(name: str) -> tuple[type, type]:
    import genlab.models  # noqa: F401  (registers the built-in models)

    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}{close_matches(name, MODELS)}")
    return MODELS[name]


def model_family(name: str) -> str:
    """The data a registered model generates: "image", "text", "graph" or "audio"."""
    return getattr(get_model(name)[1], "family", "image")


def model_name_of(model_cfg: object) -> str:
    import genlab.models  # noqa: F401

    for name, (cfg_cls, _) in MODELS.items():
        if type(model_cfg) is cfg_cls:
            return name
    raise ConfigError(f"{type(model_cfg).__name__} is not a registered model config")
