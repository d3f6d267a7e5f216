"""The algorithm core: losses, rewards and advantages as plain torch functions (no TRL)."""
from autothink.algorithms.advantages import SEG_JUDGE as SEG_JUDGE
from autothink.algorithms.advantages import SEG_NONE as SEG_NONE
from autothink.algorithms.advantages import SEG_RESPONSE as SEG_RESPONSE
from autothink.algorithms.advantages import group_normalize as group_normalize
from autothink.algorithms.advantages import history_resample as history_resample
from autothink.algorithms.advantages import policy_loss as policy_loss
from autothink.algorithms.advantages import rescale_advantages as rescale_advantages
from autothink.algorithms.advantages import sample_entropy as sample_entropy
from autothink.algorithms.advantages import segment_advantages as segment_advantages
from autothink.algorithms.advantages import segment_ids as segment_ids
from autothink.algorithms.advantages import step_srpo_rewards as step_srpo_rewards
