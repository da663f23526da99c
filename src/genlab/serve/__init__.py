"""`genlab serve`: an HTTP API and a web page over trained runs (needs the `serve` extra:
pip install -e '.[serve]').

    from genlab.serve import create_app
    app = create_app(["runs/quickstart"], api_key="secret")   # then: uvicorn.run(app)
"""

from genlab.serve.app import create_app

__all__ = ["create_app"]
