"""Step-SRPO rewards, group normalisation, segments, rescaling, resampling and the surrogate
loss of `autothink.algorithms.advantages`, against hand-computed values."""

import pytest
import torch

from autothink.algorithms.advantages import (
    group_normalize,
    rescale_advantages,
    sample_entropy,
    step_srpo_advantages,
)
from autothink.algorithms.masks import (
    SEG_JUDGE,
    SEG_NONE,
    SEG_RESPONSE,
    segment_advantages,
    segment_ids,
    segment_lengths,
)
from autothink.algorithms.rewards import step_srpo_rewards
from autothink.algorithms.schedule import history_resample
from reference import policy_loss

G = 0.5  # gamma


def rewards(modes, correct, forced=None, well_formed=None, groups=None, **kw):
    n = len(modes)
    rj, ra, m = step_srpo_rewards(
        modes, [bool(c) for c in correct], forced or [False] * n, well_formed or [True] * n,
        groups or ["q"] * n, **kw)
    return rj.tolist(), ra.tolist(), m


# --------------------------------------------------------------------------- step_srpo_rewards


def test_both_modes_tie_goes_to_off():
    rj, ra, m = rewards(["on", "on", "off", "off"], [1, 0, 1, 0])  # p_on = p_off = 0.5
    assert m == ["off"] * 4
    assert rj == [0, 0, 1, 1]
    assert ra == [G, 0, 1, 0]


def test_both_modes_on_wins():
    rj, ra, m = rewards(["on", "on", "off", "off"], [1, 1, 1, 0])  # p_on = 1 > p_off = 0.5
    assert m == ["on"] * 4
    assert rj == [1, 1, 0, 0]
    assert ra == [1, 1, G, 0]


def test_gamma_modulates_wrong_mode_answer_reward():
    _, ra, _ = rewards(["on", "on", "off", "off"], [1, 1, 1, 0], gamma=0.2)
    assert ra == pytest.approx([1, 1, 0.2, 0])
    _, ra, _ = rewards(["on", "on", "off", "off"], [1, 1, 1, 0], gamma=0.0)
    assert ra == [1, 1, 0, 0]


def test_delta_margin_and_exact_tie():
    args = (["on", "on", "off", "off"], [1, 1, 1, 0])  # p_on = 1, p_off = 0.5
    assert rewards(*args, delta=0.5)[2][0] == "off"  # 0.5 >= 1 - 0.5: tie -> off
    assert rewards(*args, delta=0.49)[2][0] == "on"
    # 6/10 >= 9/10 - 0.3 holds exactly, though 0.9 - 0.3 == 0.6000000000000001 in floats
    modes = ["on"] * 10 + ["off"] * 10
    correct = [1] * 9 + [0] + [1] * 6 + [0] * 4
    assert rewards(modes, correct, delta=0.3)[2][0] == "off"
    assert rewards(modes, correct, delta=0.29)[2][0] == "on"


def test_one_mode_absent_without_prior():
    # only think-on, p_on = 0.5: the missing p_off could go either way -> the observed mode
    rj, ra, m = rewards(["on", "on"], [1, 0])
    assert m == ["on", "on"] and rj == [1, 1] and ra == [1, 0]
    # only think-off, p_off = 0.5 -> observed mode
    assert rewards(["off", "off"], [1, 0])[2][0] == "off"
    # only think-on and it always fails: off is no worse whatever p_off is -> off
    rj, ra, m = rewards(["on", "on"], [0, 0])
    assert m[0] == "off" and rj == [0, 0] and ra == [0, 0]
    # only think-on, p_on = 0.5 <= delta -> off is decided by the data
    assert rewards(["on", "on"], [1, 0], delta=0.5)[2][0] == "off"


def test_one_mode_absent_with_prior():
    # undecided by the data -> the prior label
    rj, ra, m = rewards(["on", "on"], [1, 0], prior_modes=["off", "off"])
    assert m == ["off", "off"] and rj == [0, 0] and ra == [G, 0]
    rj, ra, m = rewards(["off", "off"], [1, 0], prior_modes=["on", "on"])
    assert m[0] == "on" and rj == [0, 0] and ra == [G, 0]
    # decided by the data -> the prior is not needed
    rj, _, m = rewards(["off", "off"], [1, 1], prior_modes=["on", "on"])  # p_off = 1 beats any p_on
    assert m[0] == "off" and rj == [1, 1]
    assert rewards(["on", "on"], [0, 0], prior_modes=["on", "on"])[2][0] == "off"
    # a None prior is no prior
    assert rewards(["on", "on"], [1, 0], prior_modes=[None, None])[2][0] == "on"


def test_no_mode_observed():
    rj, ra, m = rewards([None, None], [1, 1], well_formed=[False, False])
    assert m == [None, None] and rj == [0, 0] and ra == [0, 0]
    assert rewards([None, None], [1, 1], well_formed=[False, False], prior_modes=["on", "on"])[2][0] == "on"


def test_malformed_gets_zero_and_counts_as_failure_of_its_mode():
    # the malformed (correct) think-on sample makes p_on = 1/2 = p_off -> off; were it left
    # out of the pass rates, p_on = 1 > 1/2 would give on
    rj, ra, m = rewards(["on", "on", "off", "off"], [1, 1, 1, 0], well_formed=[True, False, True, True])
    assert m[0] == "off"
    assert rj == [0, 0, 1, 1]
    assert ra == [G, 0, 1, 0]
    # malformed in the correct mode: still zero
    rj, ra, m = rewards(["off", "off", "on"], [1, 1, 0], well_formed=[True, False, True])
    assert m[0] == "off" and rj == [1, 0, 0] and ra == [1, 0, 0]


def test_mode_none_is_in_no_pass_rate_and_gets_zero():
    # a "correct" mode-None sample changes nothing: p_on = 0/1, p_off = 0/1 -> off
    rj, ra, m = rewards([None, "on", "off"], [1, 0, 0], well_formed=[True, True, True])
    assert m[0] == "off" and rj == [0, 0, 1] and ra == [0, 0, 0]
    rj, ra, _ = rewards([None, "on", "on"], [1, 1, 0])  # only on observed, p_on = 1/2
    assert rj == [0, 1, 1] and ra == [0, 1, 0]


def test_forced_samples_count_in_pass_rates():
    # the forced think-off sample is the only think-off one: p_off = 1 >= p_on = 2/3 -> off;
    # without it only think-on would be observed and m* would be on
    rj, ra, m = rewards(["on", "on", "on", "off"], [1, 1, 0, 1], forced=[False, False, False, True])
    assert m[0] == "off"
    assert rj == [0, 0, 0, 1]
    assert ra == [G, G, 0, 1]


def test_interleaved_groups_match_per_group():
    groups = {
        "a": (["on", "on", "off", "off"], [1, 1, 1, 0]),  # on
        "b": (["on", "on", "off", "off"], [1, 0, 1, 0]),  # off (tie)
        7: (["on", "off", "off", "on"], [0, 1, 1, 1]),  # off
    }
    order = [("a", 0), (7, 0), ("b", 0), ("a", 1), ("b", 1), (7, 1), (7, 2), ("a", 2), ("b", 2),
             ("b", 3), (7, 3), ("a", 3)]
    modes = [groups[g][0][j] for g, j in order]
    correct = [groups[g][1][j] for g, j in order]
    rj, ra, m = rewards(modes, correct, groups=[g for g, _ in order])
    expect = {g: rewards(*v) for g, v in groups.items()}
    for i, (g, j) in enumerate(order):
        assert rj[i] == expect[g][0][j] and ra[i] == expect[g][1][j] and m[i] == expect[g][2][j]
    assert [m[i] for i in range(3)] == ["on", "off", "off"]


def test_a_directive_is_the_correct_mode_whatever_the_pass_rates():
    # p_on = 1 > p_off = 0, but the user wrote "DO NOT THINK": obeying is rewarded
    rj, ra, m = rewards(["on", "on", "off", "off"], [1, 1, 0, 0], directive_modes=["off"] * 4)
    assert m == ["off"] * 4 and rj == [0, 0, 1, 1] and ra == [G, G, 0, 0]
    # a directive-free group in the same batch keeps its vote
    rj, ra, m = rewards(["on", "off", "on", "off"], [1, 0, 1, 0], groups=["a", "a", "b", "b"],
                        directive_modes=["off", "off", None, None])
    assert m == ["off", "off", "on", "on"] and rj == [0, 1, 1, 0]


def test_reward_input_errors():
    with pytest.raises(ValueError, match="modes"):
        rewards(["yes"], [1])
    with pytest.raises(ValueError, match="two prior labels"):
        rewards(["on", "on"], [1, 0], prior_modes=["on", "off"])
    with pytest.raises(ValueError, match="two directives"):
        rewards(["on", "on"], [1, 0], directive_modes=["on", None])
    with pytest.raises(ValueError, match=r"directive_modes\[0\]"):
        rewards(["on"], [1], directive_modes=["maybe"])
    with pytest.raises(ValueError, match="correct"):
        step_srpo_rewards(["on"], [True, False], [False], [True], ["q"])


# ----------------------------------------------------------------------------- group_normalize


def test_group_normalize_by_hand():
    r = torch.tensor([1.0, 0.0, 3.0, 1.0, 0.5, 1.0])
    gid = ["x", "x", "y", "x", "z", "y"]
    # x: [1, 0, 1], mean 2/3, sample std sqrt(((1/3)^2*2 + (2/3)^2) / 2) = sqrt(1/3)
    # y: [3, 1], mean 2, sample std sqrt(2); z: a single sample -> std 0, advantage 0
    sx, sy = (1 / 3) ** 0.5, 2 ** 0.5
    expect = [(1 / 3) / sx, (-2 / 3) / sx, 1 / sy, (1 / 3) / sx, 0.0, -1 / sy]
    assert group_normalize(r, gid, eps=0.0).tolist() == pytest.approx(expect, rel=1e-6)
    eps = 1e-4
    assert group_normalize(r, gid).tolist() == pytest.approx(
        [(1 / 3) / (sx + eps), (-2 / 3) / (sx + eps), 1 / (sy + eps), (1 / 3) / (sx + eps), 0.0,
         -1 / (sy + eps)], rel=1e-6)
    assert group_normalize(r, gid, scale=False).tolist() == pytest.approx([1 / 3, -2 / 3, 1, 1 / 3, 0, -1])
    # constant group -> zero advantages
    assert group_normalize(torch.ones(4), [0, 0, 0, 0]).tolist() == [0, 0, 0, 0]


def test_group_normalize_matches_trl_formula():
    nanstd = pytest.importorskip("trl.trainer.utils").nanstd
    g, k = 4, 3
    rewards_ = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.0, 0.0, 1.0, 0.2, 0.9, 0.4, 0.4])
    # TRL 1.16 GRPOTrainer, scale_rewards="group" (grpo_trainer.py:2764-2787), contiguous groups
    mean = rewards_.view(-1, g).mean(dim=1).repeat_interleave(g)
    std = nanstd(rewards_.view(-1, g), dim=1).repeat_interleave(g)
    trl_adv = (rewards_ - mean) / (std + 1e-4)
    ours = group_normalize(rewards_, torch.arange(k).repeat_interleave(g))
    torch.testing.assert_close(ours, trl_adv)
    # the same groups interleaved: same per-sample values
    perm = torch.randperm(g * k, generator=torch.Generator().manual_seed(0))
    ours_perm = group_normalize(rewards_[perm], torch.arange(k).repeat_interleave(g)[perm])
    torch.testing.assert_close(ours_perm, trl_adv[perm])


def test_group_normalize_include():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    # sample 1 (e.g. forced) is left out: stats over [1, 1, 1] -> all zero, and it gets 0
    assert group_normalize(r, [0, 0, 0, 0], include=[True, False, True, True]).tolist() == [0, 0, 0, 0]
    adv = group_normalize(torch.tensor([1.0, 0.0, 5.0, 0.0]), [0, 0, 0, 0], include=[1, 1, 0, 1], eps=0.0)
    m, s = 1 / 3, (1 / 3) ** 0.5
    assert adv.tolist() == pytest.approx([(1 - m) / s, -m / s, 0.0, -m / s], rel=1e-6)


# ------------------------------------------------------------------------- segments and masks

TAGS = {"<judge>": 101, "</judge>": 102, "<think_on>": 103, "<think_off>": 104,
        "<think>": 105, "</think>": 106, "<answer>": 107, "</answer>": 108}
J, J_, ON, OFF, T, T_, A, A_ = 101, 102, 103, 104, 105, 106, 107, 108
PAD = 0


def pad(rows, width):
    ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def test_segment_ids_think_on_off_padding():
    rows = [
        [J, 5, 5, J_, ON, T, 6, 6, T_, A, 7, A_],  # think-on
        [J, 5, J_, OFF, A, 7, A_],  # think-off, padded
    ]
    ids, mask = pad(rows, 12)
    seg, lm = segment_ids(ids, TAGS, [False, False], mask)
    assert seg.tolist() == [
        [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2],
        [1, 1, 1, 1, 2, 2, 2, 0, 0, 0, 0, 0],
    ]
    assert lm.tolist() == mask.float().tolist()
    assert lm.dtype == torch.float32 and seg.dtype == torch.long


def test_segment_ids_forced():
    rows = [
        [J, J_, ON, T, 6, T_, A, 7, A_],  # forced on, prefix in the completion
        [J, J_, OFF, A, 7, A_],  # forced off
        [6, 6, T_, A, 7, A_],  # forced, prefix was in the prompt: nothing to mask
        [J, J_, ON, T, 6, T_, A, 7, A_],  # same tokens as row 0, not forced
    ]
    ids, mask = pad(rows, 9)
    seg, lm = segment_ids(ids, TAGS, torch.tensor([True, True, True, False]), mask)
    assert seg.tolist() == [
        [1, 1, 1, 2, 2, 2, 2, 2, 2],
        [1, 1, 1, 2, 2, 2, 0, 0, 0],
        [2, 2, 2, 2, 2, 2, 0, 0, 0],
        [1, 1, 1, 2, 2, 2, 2, 2, 2],
    ]
    assert lm.tolist() == [
        [0, 0, 0, 1, 1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 1, 1],
    ]
    # the forcing also prefilled <think>: forced_spans says so
    _, lm = segment_ids(ids, TAGS, [True, True, True, False], mask, forced_spans=[(0, 4), (0, 4), (0, 0), (0, 4)])
    assert lm[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert lm[1].tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0]
    assert lm[2].tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert lm[3].tolist() == [1] * 9  # not forced: forced_spans ignored
    # forced after the model's own judge: the forcing wrote the mode token and <think> mid-completion
    ids, mask = pad([[J, 5, 5, J_, ON, T, 6, T_, A, 7, A_]], 11)
    seg, lm = segment_ids(ids, TAGS, [True], mask, forced_spans=[(4, 6)])
    assert seg.tolist() == [[1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]]
    assert lm.tolist() == [[1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1]]
    lengths = segment_lengths(ids, seg, mask, [(4, 6)], T, T_)
    assert lengths == {"judge": [4], "think": [2], "answer": [3]}  # the forced <think> is not counted


def test_segment_ids_malformed():
    rows = [
        [J, 5, J_, A, 7, A_],  # no mode token: judge through </judge>
        [5, 6, 7, 7],  # no tags at all: all answer segment
        [5, J, J_, OFF, A, A_],  # junk before the judge: judge through the mode token
        [J, 5, 5, 5, 5, 5],  # unterminated judge, no mode: no judge segment found
    ]
    ids, mask = pad(rows, 6)
    seg, lm = segment_ids(ids, TAGS, [False] * 4, mask)
    assert seg.tolist() == [
        [1, 1, 1, 2, 2, 2],
        [2, 2, 2, 2, 0, 0],
        [1, 1, 1, 1, 2, 2],
        [2, 2, 2, 2, 2, 2],
    ]
    assert lm.tolist() == mask.float().tolist()


def test_segment_ids_no_mask_and_missing_tags():
    seg, lm = segment_ids(torch.tensor([[J, J_, OFF, A, A_]]), TAGS, [False])
    assert seg.tolist() == [[1, 1, 1, 2, 2]] and lm.tolist() == [[1.0] * 5]
    with pytest.raises(ValueError, match="<think_off>"):
        segment_ids(torch.tensor([[1]]), {"<judge>": 1, "</judge>": 2, "<think_on>": 3}, [False])


def test_segment_advantages():
    segs = torch.tensor([[SEG_JUDGE, SEG_JUDGE, SEG_RESPONSE, SEG_NONE],
                         [SEG_JUDGE, SEG_RESPONSE, SEG_RESPONSE, SEG_RESPONSE]])
    adv = segment_advantages(segs, torch.tensor([0.5, -1.0]), torch.tensor([2.0, 3.0]))
    assert adv.tolist() == [[0.5, 0.5, 2.0, 0.0], [-1.0, 3.0, 3.0, 3.0]]


def test_forced_and_masked_tokens_get_exactly_zero_gradient():
    torch.manual_seed(0)
    rows = [
        [J, 5, J_, ON, T, 6, T_, A, 7, A_],  # free think-on
        [J, J_, OFF, A, 7, A_],  # forced think-off, padded
        [J, 5, J_, OFF, A, 7, A_],  # free think-off, padded
    ]
    ids, mask = pad(rows, 10)
    forced = [False, True, False]
    segs, loss_mask = segment_ids(ids, TAGS, forced, mask)
    b, t, v = ids.shape[0], ids.shape[1], 110
    # tiny policy: logits = Linear(one-hot(position, sample)), so every position has its own logits
    policy = torch.nn.Linear(b * t, v)
    onehot = torch.eye(b * t).view(b, t, b * t)
    logits = policy(onehot)  # [B, T, V]
    logits.retain_grad()
    logprobs = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # [B, T]
    old = logprobs.detach() + 0.01 * torch.randn(b, t)  # ratios near 1, inside the clip range
    adv = segment_advantages(segs, torch.tensor([0.7, 0.9, -0.4]), torch.tensor([-1.3, 0.6, 1.1]))
    loss, _ = policy_loss(logprobs, old, adv, loss_mask)
    loss.backward()
    grad_norm = logits.grad.abs().sum(-1)  # [B, T]
    zero = loss_mask == 0
    assert zero[1, :3].all() and zero[1, 6:].all() and zero[0].sum() == 0  # forced prefix + padding
    assert torch.equal(grad_norm[zero], torch.zeros(int(zero.sum())))
    assert (grad_norm[~zero] > 0).all()
    assert policy.weight.grad is not None and policy.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------- rescaling


def test_rescale_advantages_by_hand_with_clipping():
    gid = ["e", "h", "e", "h", "e", "h"]  # interleaved groups
    success = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])  # D_e = 0, D_h = 1, mean D = 0.5
    entropy = torch.tensor([0.3, 0.0, 0.3, 1.0, 0.3, 2.0])  # H_e = 0.3 each; H_h mean 1
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.5, 0.5])
    lam, mu = 4.0, 2.0
    # alpha_e = 1 + 4(0 - 0.5) = -1 -> 0; alpha_h = 1 + 4(1 - 0.5) = 3
    # beta_e = 1; beta_h = 1 + 2(H - 1) = [-1 -> 0, 1, 3]
    expect = [0.0, 3 * 0 * 1.0, 0.0, 3 * 1 * -1.0, 0.0, 3 * 3 * 0.5]
    assert rescale_advantages(adv, gid, success, entropy, lam, mu).tolist() == pytest.approx(expect)
    # no clipping, small strengths
    lam, mu = 0.5, 0.1
    a_e, a_h = 1 + 0.5 * -0.5, 1 + 0.5 * 0.5
    b_h = [1 + 0.1 * (h - 1) for h in (0.0, 1.0, 2.0)]
    expect = [a_e * 1.0, a_h * b_h[0] * 1.0, a_e * -1.0, a_h * b_h[1] * -1.0, a_e * 0.5, a_h * b_h[2] * 0.5]
    out = rescale_advantages(adv, gid, success, entropy, lam, mu)
    assert out.tolist() == pytest.approx(expect)
    # per-token advantages [N, T]: the same factor on every token of a sample
    tok = adv.unsqueeze(1).repeat(1, 3) * torch.tensor([1.0, 2.0, 0.0])
    assert torch.allclose(rescale_advantages(tok, gid, success, entropy, lam, mu),
                          out.unsqueeze(1) * torch.tensor([1.0, 2.0, 0.0]))
    # lam = mu = 0: identity; bool success accepted
    assert torch.equal(rescale_advantages(adv, gid, success.bool(), entropy, 0.0, 0.0), adv)


def test_sample_entropy():
    h = torch.tensor([[1.0, 3.0, 100.0], [2.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert sample_entropy(h, m).tolist() == [2.0, 0.0]


# ---------------------------------------------------------------------------- history_resample


def test_history_resample():
    rec = {
        "all_right": [(1, 1), (1, 1), (1, 1)],  # every rollout correct in m*: no signal
        "mixed_answer": [(1, 1), (1, 0), (1, 1)],
        "mixed_judge": [(1, 0.5), (0, 0.5)],  # same r_A but r_J differs: kept
        "all_wrong": [(1, 0), (1, 0)],
        "scalar_same": [0.5, 0.5],
        "scalar_mixed": [0.5, 0.0],
        "one_rollout": [(1, 1)],
    }
    order = ["unseen", "all_right", "mixed_answer", "mixed_judge", "all_wrong", "scalar_same",
             "scalar_mixed", "one_rollout"]
    # SRPO's rule by default: only the all-correct prompts go; the all-failed ones may become solvable
    assert history_resample(order, rec) == [
        "unseen", "mixed_answer", "mixed_judge", "all_wrong", "scalar_mixed", "one_rollout"]
    assert history_resample(order, rec, keep_unsolved=False) == ["unseen", "mixed_answer", "mixed_judge",
                                                                 "scalar_mixed", "one_rollout"]
    assert history_resample(["a"], {"a": [1.0, 1.0 + 1e-9]}) == []  # within tol
    with pytest.raises(ValueError, match="different lengths"):
        history_resample(["a"], {"a": [(1, 1), (1,)]})


# ---------------------------------------------------------------------------------- policy_loss


def test_policy_loss_by_hand_and_clipping():
    ratios = torch.tensor([[1.1, 1.5, 0.5, 0.9]])
    lp = torch.log(ratios).requires_grad_()
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, 1.0, -1.0, -2.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, m = policy_loss(lp, old, adv, mask)
    # -min(r A, clip(r) A): 1.1 -> -1.1; 1.5 clipped to 1.2 -> -1.2; 0.5 (A<0) clipped to 0.8 -> +0.8
    assert loss.item() == pytest.approx((-1.1 - 1.2 + 0.8) / 3)
    assert m["clip_fraction"].item() == pytest.approx(2 / 3)
    assert m["clip_high_fraction"].item() == pytest.approx(1 / 3)
    assert m["clip_low_fraction"].item() == pytest.approx(1 / 3)
    assert m["ratio_mean"].item() == pytest.approx((1.1 + 1.5 + 0.5) / 3)
    loss.backward()
    # d loss / d logprob = -A r / n on unclipped tokens, 0 on clipped and masked ones
    assert lp.grad.tolist()[0] == pytest.approx([-1.1 / 3, 0.0, 0.0, 0.0])
    # DAPO clip-higher
    loss, m = policy_loss(torch.log(ratios), old, adv, mask, clip_high=0.28)
    assert loss.item() == pytest.approx((-1.1 - 1.28 + 0.8) / 3)
    loss, m = policy_loss(torch.log(ratios), old, adv, mask, clip_high=0.6)
    assert loss.item() == pytest.approx((-1.1 - 1.5 + 0.8) / 3) and m["clip_high_fraction"].item() == 0


def test_policy_loss_token_level_mean_and_broadcast():
    lp = torch.tensor([[0.1, -0.1, 0.0, 0.0], [0.05, 0.0, 0.0, 0.0]])
    old = torch.zeros(2, 4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    adv = torch.tensor([1.0, -2.0])
    loss, _ = policy_loss(lp, old, adv, mask)
    e = torch.exp
    per_tok = [-e(torch.tensor(0.1)), -e(torch.tensor(-0.1)), -1.0, 2 * e(torch.tensor(0.05))]
    assert loss.item() == pytest.approx(float(sum(per_tok)) / 4)  # 4 tokens, not a mean of per-sample means
    loss_tok, _ = policy_loss(lp, old, adv.unsqueeze(1).expand(2, 4), mask)
    assert loss_tok.item() == pytest.approx(loss.item())
    # no masked token at all: 0, not NaN
    loss0, _ = policy_loss(lp, old, adv, torch.zeros(2, 4))
    assert loss0.item() == 0.0




def test_step_srpo_advantages_use_the_whole_group_as_the_judge_baseline():
    # Group 0: two free rollouts chose off (wrong, r_J 0), forced on showed m* = on (r_J 1), forced off r_J 0.
    # Group 1: free rollouts split; the forced ones only move the baseline.
    r_j = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    r_a = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.0])
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    forced = [False, False, True, True, False, False, True, True]
    a_j, a_a = step_srpo_advantages(r_j, r_a, groups, forced, eps=0.0)
    # group 0: mean 0.25, sample std sqrt(0.75 / 3) = 0.5; group 1: mean 0.5, sample std sqrt(1 / 3)
    s1 = (1 / 3) ** 0.5
    assert a_j.tolist() == pytest.approx([-0.5, -0.5, 0.0, 0.0, 0.5 / s1, -0.5 / s1, 0.0, 0.0])
    assert a_a.tolist() == pytest.approx(group_normalize(r_a, groups, eps=0.0).tolist())
    # the free-only baseline this replaces: no signal at all for group 0's wrong choices
    assert group_normalize(r_j, groups, include=[not f for f in forced], eps=0.0)[:2].tolist() == [0.0, 0.0]
    a_j, _ = step_srpo_advantages(r_j, r_a, groups, forced, scale=False)
    assert a_j[:2].tolist() == [-0.25, -0.25]
    with pytest.raises(ValueError, match="forced"):
        step_srpo_advantages(r_j, r_a, groups, forced[:3])
