"""`genlab serve`: an HTTP API and a web page over trained runs (needs the `serve` extra:
pip install -e '.[serve]').

    from genlab.serve import create_app
    app = create_app(["runs/quickstart"], api_key="secret")   # then: uvicorn.run(app)
"""

from genlab.extras import require

require("fastapi", "serve", "genlab serve")
require("python_multipart", "serve", "genlab serve")  # form uploads (python-multipart)
from genlab.serve.app import create_app  # noqa: E402

__all__ = ["create_app"]
