"""Model families. Importing this package registers every built-in model."""

from genlab.models import vae  # noqa: F401
