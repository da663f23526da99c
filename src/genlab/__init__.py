"""genlab: train, measure and use generative models.

    import genlab
    result = genlab.train("vae-mnist", steps=2000)
    images, labels = genlab.load(result.run_dir).sample(16, seed=0)
    report = genlab.evaluate(result.run_dir, n=1000)
    genlab.apply(result.run_dir, "inpaint", input="x.npz", out="filled.npz")

The names below are imported on first use (PEP 562), so that `import genlab` and
`genlab --help` do not wait for torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "train": "genlab.engine.run",
    "load": "genlab.engine.run",
    "Run": "genlab.engine.run",
    "resolve": "genlab.config",
    "RunConfig": "genlab.config",
    "GenlabError": "genlab.errors",
    "evaluate": "genlab.evaluation",
    "apply": "genlab.apply",
}

__all__ = ["GenlabError", "Run", "RunConfig", "__version__", "apply", "evaluate", "load", "resolve", "train"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'genlab' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    # genlab.apply is the subpackage itself, callable as its apply() (so that `import
    # genlab.apply.io` keeps working: Python sets a subpackage as an attribute of its parent)
    value = module if name == "apply" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
