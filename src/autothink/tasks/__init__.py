"""Tasks: the `Task` record (a query and how to grade it), its JSONL files, and the offline suites.

- `task`: `Task`, `load_tasks`, `save_tasks`.
- `suites`: `SUITES` (reasoning-gym graded tiers, HumanEval, MATH-500, AIME), `load_suite`,
  `parse_suite` (`name`, `name:tier` or a tasks `.jsonl`), `autothink tasks list|export`.
"""
from autothink.tasks.suites import SUITES as SUITES
from autothink.tasks.suites import load_suite as load_suite
from autothink.tasks.suites import parse_suite as parse_suite
from autothink.tasks.task import DOMAINS as DOMAINS
from autothink.tasks.task import Task as Task
from autothink.tasks.task import load_tasks as load_tasks
from autothink.tasks.task import save_tasks as save_tasks
