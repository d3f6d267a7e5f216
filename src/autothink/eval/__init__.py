"""`autothink eval`: accuracy and thinking cost under auto, forced-on and forced-off modes.

- `run`: `EvalConfig`, `run_eval` (samples, metrics, resume), the metric functions.
- `report`: the text table, PNG plots, the HTML report, `autothink eval compare`.
"""
from autothink.eval.run import EvalConfig as EvalConfig
from autothink.eval.run import run_eval as run_eval
