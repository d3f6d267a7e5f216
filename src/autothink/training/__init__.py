"""The trainers: thin glue over the HF `Trainer` and TRL, the only modules that import them.

- `distill`: stage 1, `autothink distill` (ULD + MTP heads, live or precomputed teachers).
- `sft`: stage 2, `autothink sft` (cold-start SFT, TRL `SFTTrainer`).
- `step_srpo`: stage 3, `autothink rl` (Step-SRPO, a TRL `GRPOTrainer` subclass).
- `args`: their shared defaults and `resume_point`.
"""
