"""genlab: train, measure and use generative models.

    import genlab
    result = genlab.train("vae-mnist", steps=2000)
    images, labels = genlab.load(result.run_dir).sample(16, seed=0)
"""

__version__ = "0.1.0"

from genlab.config import RunConfig, resolve  # noqa: E402
from genlab.engine.run import Run, load, train  # noqa: E402
from genlab.errors import GenlabError  # noqa: E402

__all__ = ["__version__", "train", "load", "Run", "resolve", "RunConfig", "GenlabError"]
