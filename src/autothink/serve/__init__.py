"""`autothink serve`: an OpenAI-compatible server over any backend, with AutoThink mode control.

- `protocol`: the request schema, OpenAI-style errors, response and stream bodies.
- `scheduler`: the bounded queue and the worker that batches alike requests.
- `app`: the FastAPI app (`create_app`), `serve` (draining on Ctrl+C / SIGTERM), `running_server`
  (a server in a background thread, for tests and notebooks).
"""
from autothink.serve.app import create_app as create_app
from autothink.serve.app import running_server as running_server
from autothink.serve.app import serve as serve
