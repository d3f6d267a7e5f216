"""The dual-regime data pipeline: tag -> synth (stage-1 data) -> coldstart (SFT data, RL prompts) -> report."""
