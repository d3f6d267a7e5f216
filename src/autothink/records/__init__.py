"""Records: JSONL files, the message check, and the schema of every hand-off file.

- `jsonl`: `read_jsonl` (errors name file and line), `write_jsonl` (atomic), `load_done`
  (append-only logs that resume after a kill).
- `messages`: `as_messages`, the one check of chat messages.
- `stage1`, `sft`, `rl_prompts`: the readers of `stage1.jsonl` (distillation), the SFT data
  (`coldstart.jsonl`) and `rl_prompts.jsonl` (Step-SRPO); a bad row names file, line and field.
"""
from autothink.records.jsonl import RecordError as RecordError
from autothink.records.jsonl import load_done as load_done
from autothink.records.jsonl import read_jsonl as read_jsonl
from autothink.records.jsonl import write_jsonl as write_jsonl
from autothink.records.messages import as_messages as as_messages
