"""The algorithm core: losses, rewards, advantages, masks and schedules as plain functions.

No TRL, transformers or accelerate import (tests/test_layout.py checks), so every formula
is tested alone and could move to another engine. One module per concern:

- `uld`: the ULD loss across vocabularies, its row pairing, CE, the MTP distillation total.
- `rewards`: Step-SRPO judge/answer rewards, the mode vote, the verifier reward (TRL's form).
- `advantages`: GRPO group normalisation, difficulty/entropy-aware rescaling (KAT-Coder).
- `masks`: per-token segments and loss masks of AutoThink completions; per-segment advantages.
- `schedule`: the SRPO prompt schedule (two stages, history resampling) and forced modes.
- `trie`: trie-packed training, shared prefixes computed once with exact gradients.
- `references`: multi-ground-truth RFT, a rollout's tool calls against reference trajectories.
"""
from autothink.algorithms.advantages import group_normalize as group_normalize
from autothink.algorithms.advantages import rescale_advantages as rescale_advantages
from autothink.algorithms.advantages import sample_entropy as sample_entropy
from autothink.algorithms.advantages import step_srpo_advantages as step_srpo_advantages
from autothink.algorithms.masks import SEG_JUDGE as SEG_JUDGE
from autothink.algorithms.masks import SEG_NONE as SEG_NONE
from autothink.algorithms.masks import SEG_RESPONSE as SEG_RESPONSE
from autothink.algorithms.masks import segment_advantages as segment_advantages
from autothink.algorithms.masks import segment_ids as segment_ids
from autothink.algorithms.masks import segment_lengths as segment_lengths
from autothink.algorithms.references import closest_reference as closest_reference
from autothink.algorithms.references import drifted as drifted
from autothink.algorithms.rewards import step_srpo_rewards as step_srpo_rewards
from autothink.algorithms.rewards import verifier_reward as verifier_reward
from autothink.algorithms.rewards import vote_mode as vote_mode
from autothink.algorithms.schedule import PromptSchedule as PromptSchedule
from autothink.algorithms.schedule import forced_modes as forced_modes
from autothink.algorithms.schedule import history_resample as history_resample
from autothink.algorithms.trie import TriePack as TriePack
from autothink.algorithms.trie import trie_forward as trie_forward
from autothink.algorithms.trie import trie_logprobs as trie_logprobs
from autothink.algorithms.trie import trie_pack as trie_pack
from autothink.algorithms.uld import causal_lm_ce as causal_lm_ce
from autothink.algorithms.uld import mtp_distill_loss as mtp_distill_loss
from autothink.algorithms.uld import pair_rows as pair_rows
from autothink.algorithms.uld import prediction_bounds as prediction_bounds
from autothink.algorithms.uld import shift_pairs as shift_pairs
from autothink.algorithms.uld import sorted_probs as sorted_probs
from autothink.algorithms.uld import uld_loss as uld_loss
from autothink.algorithms.uld import uld_loss_sorted as uld_loss_sorted
