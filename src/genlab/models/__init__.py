"""Model families. Importing this package registers every built-in model."""

from genlab.models import gan, translation, vae  # noqa: F401
from genlab.models import semivae  # noqa: F401  (semi-supervised M2)
from genlab.models.autoregressive import gpt, lstm, pixelcnn, wavenet  # noqa: F401
from genlab.models.diffusion import ddpm, diffwave  # noqa: F401
from genlab.models.graph import gae, graphrnn, molgraphrnn  # noqa: F401
from genlab.models import style  # noqa: F401  (feed-forward style transfer)
from genlab.models import pretext  # noqa: F401  (self-supervised pretext tasks)
from genlab.models import smilesvae  # noqa: F401  (SMILES VAE, molecule rows)
from genlab.models import gaussian  # noqa: F401  (probabilistic PCA per class, fitted in one pass)
