"""Trie-packed training (KAT-Coder §4.1): sequences that share prefixes computed once, exactly.

    packs = trie_pack(sequences, weights, token_budget=4096)
    for pack in packs:
        logp, _ = trie_logprobs(model, pack)                  # [N]: log p(token | its ancestors)
        loss = -(pack.weight * logp).sum() / normaliser      # = the unpacked Σ_s Σ_t w[s][t]·NLL

A pack is one row of distinct trie nodes in depth-first order. Each node attends to exactly its
ancestors and itself (DFS intervals: k is an ancestor-or-self of q iff k <= q < end[k]); its
position id is its depth (or the position its sequences give it); its token is predicted from
its parent's hidden state, so a node that branches predicts a different next token per child;
its weight is the sum of the weights of that prediction over every sequence through it. A trie
that does not fit the token budget is cut into several packs: a subtree that does not fit starts
a pack that repeats its ancestor path, each prediction's weight counted in one pack only, every
sequence whole in exactly one pack (so per-sequence log-probs can be gathered from it, for RL
losses that are not linear in them: `token_index`).

Pure torch; `trie_forward` drives any Hugging Face causal LM by duck typing (no import).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

_VERIFIED_ATTENTION = ("sdpa", "eager", "flex_attention")


@dataclass
class TriePack:
    """One packed row of trie nodes, in depth-first order (N nodes).

    Attributes:
        input_ids: long [N]. position_ids: long [N] (depth, unless positions were given).
        parent: long [N], the index whose hidden state predicts this node; -1 for a root.
        weight: float [N], the summed weight of predicting this node (0 where another pack counts it).
        end: long [N], one past the last index of this node's subtree.
        token_index: sequence index -> long [len] of its tokens' indices in this pack.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    parent: torch.Tensor
    weight: torch.Tensor
    end: torch.Tensor
    token_index: dict[int, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    def attention_mask(self) -> torch.Tensor:
        """bool [N, N]: row q may attend to column k iff k is q or one of its ancestors."""
        index = torch.arange(len(self))
        return (index[None, :] <= index[:, None]) & (index[:, None] < self.end[None, :])


class _Node:
    __slots__ = ("token", "position", "parent", "children", "weight", "order", "size", "depth")

    def __init__(self, token: int, position: int, parent: _Node | None):
        self.token, self.position, self.parent = token, position, parent
        self.children: dict[tuple[int, int], _Node] = {}
        self.weight = 0.0
        self.depth = 0 if parent is None else parent.depth + 1
        self.order = self.size = 0


def _check(sequences, weights, token_budget, positions) -> None:
    if len(weights) != len(sequences):
        raise ValueError(f"{len(sequences)} sequences but {len(weights)} weight lists")
    if positions is not None and len(positions) != len(sequences):
        raise ValueError(f"{len(sequences)} sequences but {len(positions)} position lists")
    if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 1:
        raise ValueError(f"token_budget must be an integer >= 1, got {token_budget!r}")
    for s, seq in enumerate(sequences):
        if len(seq) == 0:
            raise ValueError(f"sequence {s} is empty")
        if len(weights[s]) != len(seq):
            raise ValueError(f"sequence {s} has {len(seq)} tokens but {len(weights[s])} weights")
        if positions is not None and len(positions[s]) != len(seq):
            raise ValueError(f"sequence {s} has {len(seq)} tokens but {len(positions[s])} positions")
        if len(seq) > token_budget:
            raise ValueError(f"sequence {s} has {len(seq)} tokens, more than the token budget {token_budget}")


def _build(sequences, weights, positions) -> tuple[list[_Node], list[list[_Node]]]:
    """The trie (roots) and each sequence's path of nodes; predictions' weights summed per node."""
    roots: dict[tuple[int, int], _Node] = {}
    paths = []
    for s, seq in enumerate(sequences):
        node, path = None, []
        for t, token in enumerate(seq):
            key = (int(token), int(positions[s][t]) if positions is not None else t)
            siblings = roots if node is None else node.children
            child = siblings.get(key)
            if child is None:
                child = siblings[key] = _Node(key[0], key[1], node)
            if t > 0:  # the first token is predicted from nothing: its weight is ignored
                child.weight += float(weights[s][t])
            node = child
            path.append(node)
        paths.append(path)
    order = 0
    stack = [(r, False) for r in reversed(list(roots.values()))]
    while stack:  # preorder numbers and subtree sizes, without recursion
        node, done = stack.pop()
        if done:
            node.size = 1 + sum(c.size for c in node.children.values())
            continue
        node.order, order = order, order + 1
        stack.append((node, True))
        stack.extend((c, False) for c in reversed(list(node.children.values())))
    return list(roots.values()), paths


def _units(roots: list[_Node], budget: int) -> list[_Node]:
    """Cut points: the highest subtrees that fit the budget together with their ancestor path."""
    units, stack = [], list(roots)
    while stack:
        node = stack.pop()
        if node.size + node.depth <= budget or not node.children:
            units.append(node)
        else:
            stack.extend(node.children.values())
    return units


def _ancestors(node: _Node) -> list[_Node]:
    out = []
    while node.parent is not None:
        node = node.parent
        out.append(node)
    return out


def _subtree(node: _Node) -> list[_Node]:
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(n.children.values())
    return out


class _Group:
    """The nodes of one pack in the making: whole subtrees (units) with their ancestor paths."""

    def __init__(self):
        self.held: set[int] = set()
        self.nodes: list[_Node] = []
        self.sequences: list[int] = []

    def _lacking(self, path: list[_Node]) -> int:
        """How many of the path's nodes (parent first) the pack lacks: ancestor paths are held whole."""
        return next((i for i, a in enumerate(path) if id(a) in self.held), len(path))

    def cost(self, unit: _Node, path: list[_Node]) -> int:
        return unit.size + self._lacking(path)

    def add(self, unit: _Node, path: list[_Node], sequences: list[int]) -> None:
        added = _subtree(unit) + path[:self._lacking(path)]
        self.held.update(id(n) for n in added)
        self.nodes += added
        self.sequences += sequences


def trie_pack(sequences: Sequence[Sequence[int]], weights: Sequence[Sequence[float]], token_budget: int,
              positions: Sequence[Sequence[int]] | None = None) -> list[TriePack]:
    """Pack sequences into prefix tries of at most `token_budget` distinct tokens each.

    Args:
        sequences: lists of token ids.
        weights: `weights[s][t]` weighs predicting token t of sequence s from its tokens before t
            (`weights[s][0]` is ignored; signed values, e.g. advantages, are fine).
        token_budget: most nodes in one pack.
        positions: per sequence, the position id of each token (default 0, 1, 2, ...); tokens are
            shared only where token and position agree.

    Cuts: subtree sizes (summed bottom-up) give the highest subtrees that fit the budget together
    with their ancestor path; these units go into packs first-fit, largest first, by marginal cost
    (the unit plus the part of its ancestor path the pack lacks), so a prompt shared by many
    completions is repeated only as often as the budget forces.

    Returns:
        Packs such that Σ_packs Σ_j weight[j]·NLL(logits[parent[j]], input_ids[j]) equals the
        unpacked Σ_s Σ_t weights[s][t]·NLL, in loss and gradients.

    Raises:
        ValueError: lengths that do not match, an empty sequence, or one longer than the budget.

    >>> packs = trie_pack([[1, 2, 3], [1, 2, 4]], [[0, 1, 1], [0, 1, 1]], token_budget=8)
    >>> packs[0].input_ids.tolist(), packs[0].parent.tolist(), packs[0].weight.tolist()
    ([1, 2, 3, 4], [-1, 0, 1, 1], [0.0, 2.0, 1.0, 1.0])
    """
    _check(sequences, weights, token_budget, positions)
    roots, paths = _build(sequences, weights, positions)
    units = _units(roots, token_budget)
    unit_of = {id(n): u for u in units for n in _subtree(u)}
    members: dict[int, list[int]] = {id(u): [] for u in units}
    for s, path in enumerate(paths):
        end = path[-1]
        while id(end) not in unit_of:  # a sequence ending above the cuts rides with a unit below its end
            end = next(iter(end.children.values()))
        members[id(unit_of[id(end)])].append(s)
    # First fit, largest first, on marginal cost: a unit's subtree plus the part of its ancestor path the pack lacks.
    groups: list[_Group] = []
    for u in sorted(units, key=lambda u: (-(u.size + u.depth), u.order)):
        path = _ancestors(u)
        group = next((g for g in groups if g.cost(u, path) <= token_budget - len(g.nodes)), None)
        if group is None:
            group = _Group()
            groups.append(group)
        group.add(u, path, members[id(u)])
    counted: set[int] = set()
    packs = []
    for group in groups:
        order, seqs = sorted(group.nodes, key=lambda n: n.order), group.sequences
        index = {id(n): i for i, n in enumerate(order)}
        end = list(range(1, len(order) + 1))
        stack: list[int] = []
        for i, n in enumerate(order):  # close the subtrees that end before node i
            while stack and order[stack[-1]] is not n.parent:
                end[stack.pop()] = i
            stack.append(i)
        for i in stack:
            end[i] = len(order)
        weight = []
        for n in order:
            weight.append(0.0 if id(n) in counted else n.weight)
            counted.add(id(n))
        packs.append(TriePack(
            input_ids=torch.tensor([n.token for n in order], dtype=torch.long),
            position_ids=torch.tensor([n.position for n in order], dtype=torch.long),
            parent=torch.tensor([index[id(n.parent)] if n.parent is not None else -1 for n in order],
                                dtype=torch.long),
            weight=torch.tensor(weight, dtype=torch.float32),
            end=torch.tensor(end, dtype=torch.long),
            token_index={s: torch.tensor([index[id(n)] for n in paths[s]], dtype=torch.long) for s in sorted(seqs)},
        ))
    return packs


def _config(model):
    """The model's config, through wrappers that hold it as `.module` (DDP)."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return model.config


def check_trie_model(model) -> str:
    """The model's attention implementation, if trie packing is verified with it.

    Raises:
        ValueError: another attention implementation, or sliding-window layers.
    """
    config = _config(model)
    impl = getattr(config, "_attn_implementation", None)
    if impl not in _VERIFIED_ATTENTION:
        raise ValueError(f"trie packing is verified with {', '.join(_VERIFIED_ATTENTION)} attention, "
                         f"not {impl!r}: load the model with attn_implementation='sdpa'")
    layer_types = getattr(config, "layer_types", None) or []
    windowed = "sliding_attention" in layer_types or (
        getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
        and not layer_types)
    if windowed:
        raise ValueError(f"{type(model).__name__} has sliding-window attention layers: a window over the packed row "
                         "is not a window over each sequence's ancestors, so trie packing refuses it")
    return impl


def flex_block_mask(pack: TriePack, device=None, block_size: int = 128):
    """A FlexAttention `BlockMask` of the pack, the row padded to a multiple of `block_size`.

    Padding nodes attend to themselves only (no fully masked row), and no real node sees them.
    On CUDA the mask is built compiled, without materialising the dense [N, N] mask.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    n = len(pack)
    padded = -(-n // block_size) * block_size
    end = torch.arange(1, padded + 1)
    end[:n] = pack.end
    end = end.to(device)

    def ancestor_or_self(b, h, q, k):
        return (k <= q) & (q < end[k])

    return create_block_mask(ancestor_or_self, B=None, H=None, Q_LEN=padded, KV_LEN=padded, device=device,
                             BLOCK_SIZE=block_size, _compile=torch.device(device or "cpu").type == "cuda")


def trie_forward(model, pack: TriePack, rows: torch.Tensor | None = None) -> torch.Tensor:
    """One forward of a Hugging Face causal LM over a pack: logits [N, V] (or [len(rows), V] of `rows` only).

    The tree mask takes the form the model's attention needs: a bool mask for SDPA, an additive
    float mask for eager, a `BlockMask` for FlexAttention (padded). A pack is never run without a
    mask: HF would read the depth resets as separate packed sequences.

    Raises:
        ValueError: an attention implementation not verified here, or sliding-window layers.
    """
    impl = check_trie_model(model)
    param = next(model.parameters())
    device, n = param.device, len(pack)
    ids, positions = pack.input_ids[None].to(device), pack.position_ids[None].to(device)
    if impl == "flex_attention":
        mask = flex_block_mask(pack, device)
        pad = mask.shape[-1] - n
        ids = torch.nn.functional.pad(ids, (0, pad))
        positions = torch.nn.functional.pad(positions, (0, pad))
    else:
        mask = pack.attention_mask()[None, None].to(device)  # (1, 1, N, N)
        if impl == "eager":
            mask = torch.zeros(mask.shape, dtype=param.dtype, device=device).masked_fill(
                ~mask, torch.finfo(param.dtype).min)
    extra = {"logits_to_keep": rows.to(device)} if rows is not None else {}
    logits = model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=False, **extra).logits[0]
    return logits if rows is not None or impl != "flex_attention" else logits[:n]


def trie_logprobs(model, pack: TriePack, temperature: float = 1.0, entropy: bool = False,
                  nodes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per node, log p(its token | its ancestors) [N] (0 at roots), and optionally the entropy [N] of
    that distribution.

    `nodes` (bool [N]) picks the nodes whose log-probs are needed (default: all; e.g. `pack.weight
    != 0`); the others get 0, and only the parents of the needed ones go through the output head,
    which on a large vocabulary is a good share of the compute.

    >>> # logp, _ = trie_logprobs(model, pack); loss = -(pack.weight.to(logp) * logp).sum()
    """
    has = pack.parent >= 0
    if nodes is not None:
        has &= nodes.cpu().bool()
    rows, inverse = torch.unique(pack.parent[has], return_inverse=True)
    device = next(model.parameters()).device
    if not len(rows):
        logp = torch.zeros(len(pack), device=device)
        return logp, torch.zeros_like(logp) if entropy else None
    logits = trie_forward(model, pack, rows)
    # fp32 at least: a log-softmax over a large vocabulary in bf16 loses the small log-probs
    logsm = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature, dim=-1)
    inverse, has = inverse.to(device), has.to(device)
    logp = torch.zeros(len(pack), dtype=logsm.dtype, device=device).masked_scatter(
        has, logsm[inverse, pack.input_ids.to(device)[has]])
    if not entropy:
        return logp, None
    row_entropy = -(logsm.exp() * logsm).sum(-1)  # (R,)
    return logp, torch.zeros_like(logp).masked_scatter(has, row_entropy[inverse])

def trie_row_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                      token_budget: int, temperature: float = 1.0,
                      entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B, K] (and entropies) of the last K columns of padded rows, shared prefixes computed once.

    The layout of a GRPO log-prob pass: row b is its tokens where `attention_mask` is 1, at their
    column index as position id (what HF gives a padded row), so the prompt of a group (same
    tokens, same padding) is one path of the trie. Columns with mask 0 get 0, as TRL's fused
    head gives them; each pack holds at most `token_budget` tokens.
    """
    mask = attention_mask.bool().cpu()
    columns = [row.nonzero()[:, 0] for row in mask]
    sequences = [input_ids[b].cpu()[c].tolist() for b, c in enumerate(columns)]
    packs = trie_pack(sequences, [[0.0] * len(x) for x in sequences], token_budget,
                      positions=[c.tolist() for c in columns])
    logps = entropies = None
    rows = torch.repeat_interleave(torch.arange(len(columns)), torch.tensor([len(c) for c in columns]))
    first = mask.shape[1] - logits_to_keep
    for pack in packs:
        seqs = sorted(pack.token_index)
        kept = [columns[s] >= first for s in seqs]
        index = torch.cat([pack.token_index[s][k] for s, k in zip(seqs, kept)])
        nodes = torch.zeros(len(pack), dtype=torch.bool)
        nodes[index] = True
        logp, ent = trie_logprobs(model, pack, temperature, entropy, nodes)
        if logps is None:
            logps = logp.new_zeros(mask.shape)
            entropies = logp.new_zeros(mask.shape) if entropy else None
        index = index.to(logp.device)
        where = (torch.cat([rows[rows == s][k] for s, k in zip(seqs, kept)]).to(logp.device),
                 torch.cat([columns[s][k] for s, k in zip(seqs, kept)]).to(logp.device))
        logps = logps.index_put(where, logp[index])
        if entropy:
            entropies = entropies.index_put(where, ent[index])
    return logps[:, first:], entropies[:, first:] if entropy else None
