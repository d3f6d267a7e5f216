"""Tool environments for agent episodes and agentic RL, in the shape TRL's `environment_factory` takes
(public methods are the tools, `reset` starts a task, `get_reward` scores it).

- `coding`: `CodingEnvironment`, a sandboxed coding workspace (HumanEval or your own tasks).
- `bfcl`: BFCL's multi-turn simulators and tasks (`load_bfcl_tasks`, `bfcl_environment`).
- `rollout`: `run_episode`, one agent episode with every tool call executed and recorded.
- `reference_agent`: `ReferenceAgent`, the scripted ground-truth agent with real mistakes.
"""
