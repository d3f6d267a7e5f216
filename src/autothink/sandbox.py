"""`autothink.sandbox`: the code sandbox, where DESIGN §6 names it (it lives in `autothink.verify.sandbox`)."""
from autothink.verify.sandbox import RunResult as RunResult
from autothink.verify.sandbox import SandboxUnavailable as SandboxUnavailable
from autothink.verify.sandbox import run_many as run_many
from autothink.verify.sandbox import run_python as run_python
