"""Optional dependencies. The core install trains, samples and evaluates image models; each
other family (and `genlab serve`) needs an extra, e.g. `pip install 'genlab[graph]'`.

Every import of an optional package goes through `require` at the point of use, so that a
command that needs a missing extra stops with one line naming it (a ConfigError), and a core
install never imports what it does not need.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from genlab.errors import ConfigError

# extra -> the top-level modules genlab imports from it (pyproject.toml's optional-dependencies
# name the distributions; tests/test_extras.py checks both agree)
EXTRAS: dict[str, tuple[str, ...]] = {
    "graph": ("torch_geometric", "scipy"),
    "text": ("tokenizers", "sacrebleu", "rouge_score"),
    "audio": ("soundfile", "scipy"),
    "privacy": ("opacus",),
    "serve": ("fastapi", "uvicorn", "python_multipart"),
    "inception": ("torch_fidelity",),
    "export": ("onnx", "onnxruntime", "onnxscript"),
    "explain": ("captum",),
    "molecules": ("rdkit", "selfies", "fcd_torch"),
    "federated": ("flwr",),
}


def install_hint(extra: str) -> str:
    """`pip install 'genlab[extra]'`, plus the editable form when genlab runs from a source checkout."""
    hint = f"pip install 'genlab[{extra}]'"
    if (Path(__file__).resolve().parents[2] / "pyproject.toml").is_file():  # src/genlab/extras.py
        hint += f" (in a source checkout: pip install -e '.[{extra}]')"
    return hint


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module` (e.g. "torch_geometric.nn") or raise ConfigError
    "<what> needs the <extra> extra (<module> is missing): pip install 'genlab[<extra>]'".

    Args:
        module: the module to import, dotted names allowed.
        extra: the pyproject extra that installs it.
        what: the feature that needs it, as the user asked for it ("graph runs", "genlab serve").

    Returns:
        The imported module.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = (e.name or module).split(".")[0]
        raise ConfigError(f"{what} needs the {extra} extra ({missing} is missing): {install_hint(extra)}") from None
    except ImportError as e:  # installed but broken (a missing shared library, a version clash)
        first = (str(e).strip().splitlines() or ["import failed"])[0]
        raise ConfigError(f"{what} needs the {extra} extra ({module} cannot be imported: {first}); "
                          f"reinstall it: {install_hint(extra)}") from None
