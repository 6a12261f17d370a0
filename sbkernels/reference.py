"""Plain PyTorch reference of the "sb" selection op: the definition every kernel is tested against.

Written with static shapes only (cumsum + scatter instead of ``nonzero`` or boolean indexing, no
``.item()``), so it runs on CUDA tensors without a host sync and traces under ``torch.compile``.

Per row i (SPEC section 2)::

    loss_i = (1 - eps) * (lse_i - x_i[t_i]) + eps * (lse_i - mean_c x_i[c]),  lse_i = logsumexp_c x_i[c]
    pct_i  = #{h in snapshot : h < loss_i} / n_hist          (1 when the history is empty)
    p_i    = max(floor, pct_i ** beta), or 1 while pushed < prime
    u_i    = tl.rand(seed, (step << 32) + i)                 (Philox4x32-10, reproduced bit for bit)
    selected_i = valid_i and u_i < p_i

``valid_i``: the row is not ignored, its target is in range and its loss is finite. Valid losses are pushed
into the history ring in row order after ranking.
"""

from __future__ import annotations

import torch

from ._rows import advance_counters, compact, integer_beta, row_validity, target_masks
from .slots import META_PUSHED, META_SEED, META_STEP

# Philox4x32 constants, as in triton.language.random.
_PHILOX_KEY_A = 0x9E3779B9
_PHILOX_KEY_B = 0xBB67AE85
_PHILOX_ROUND_A = 0xD2511F53
_PHILOX_ROUND_B = 0xCD9E8D57
_PHILOX_ROUNDS = 10
_U32 = 0xFFFFFFFF
# Largest float32 s with (2**31 - 1) * s < 1 after rounding: Triton's uint32 -> [0, 1) scale.
_UNIFORM_SCALE = 4.6566127342e-10


def _mul_u32(a: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of the 64-bit product a * x, for a < 2**32 and x (int64) in [0, 2**32).

    The product can exceed int64, so x is split into 16-bit halves; every partial stays below 2**49.
    """
    x_hi, x_lo = x >> 16, x & 0xFFFF
    low_part = a * x_lo
    mid = a * x_hi + (low_part >> 16)
    return mid >> 16, ((mid & 0xFFFF) << 16) | (low_part & 0xFFFF)


def philox_uniform(seed: torch.Tensor, step: torch.Tensor, n: int, offset: int = 0) -> torch.Tensor:
    """``tl.rand(seed, (step << 32) + offset + i)`` for i in [0, n), bit for bit, as float32 (offset + n <= 2**32).

    Triton splits the int64 offset into counter words c0 = low 32 bits (i) and c1 = high 32 bits (step),
    keys the generator with the two halves of the seed, runs 10 Philox rounds, and maps the first output
    word (as int32 x) to ``(x if x >= 0 else ~x) * scale`` in float32. ``seed`` and ``step`` are 0-d int64
    tensors; nothing is read back to the host.
    """
    c0 = torch.arange(offset, offset + n, dtype=torch.int64, device=seed.device)
    c1 = (step & _U32).expand(n)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0 = seed & _U32
    k1 = (seed >> 32) & _U32
    for _ in range(_PHILOX_ROUNDS):
        hi_b, lo_b = _mul_u32(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul_u32(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _PHILOX_KEY_A) & _U32
        k1 = (k1 + _PHILOX_KEY_B) & _U32
    as_int32 = torch.where(c0 >= 2**31, c0 - 2**32, c0)
    folded = torch.where(as_int32 < 0, -as_int32 - 1, as_int32)
    # A Python scalar, not torch.tensor(..., device=device): that would copy host data to the device per call.
    return folded.to(torch.float32) * _UNIFORM_SCALE


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row cross-entropy in float32 math.

    Returns ``(loss, ignored, bad)``: ignored rows (target == ignore_index) get loss 0; rows whose target is
    outside [0, C) get NaN and are flagged in ``bad``.
    """
    lse, x_target, x_sum = softmax_stats(logits, targets, logit_sums=label_smoothing > 0)
    return loss_from_stats(lse, x_target, x_sum, targets, logits.shape[1], ignore_index, label_smoothing)


def softmax_stats(
    logits: torch.Tensor, targets: torch.Tensor, column_offset: int = 0, logit_sums: bool = True
) -> torch.Tensor:
    """(3, N) float32 softmax statistics of (N, C) logits that are columns ``[column_offset, column_offset +
    C)`` of wider ones (a tile; the whole logits at offset 0): per row the logsumexp over these columns, the
    logit of the row's target if it is one of them (else 0), and the sum of the logits (0 unless
    ``logit_sums``). Tiles combine exactly: logsumexps by logaddexp, the rest by sums."""
    x = logits.float()
    column = targets.long() - column_offset
    in_tile = (column >= 0) & (column < x.shape[1])
    x_target = x.gather(1, column.clamp(0, x.shape[1] - 1).unsqueeze(1)).squeeze(1)
    x_sum = x.sum(dim=1) if logit_sums else torch.zeros_like(x_target)
    return torch.stack([torch.logsumexp(x, dim=1), torch.where(in_tile, x_target, 0.0), x_sum])


def loss_from_stats(
    lse: torch.Tensor, x_target: torch.Tensor, x_sum: torch.Tensor, targets: torch.Tensor, num_classes: int,
    ignore_index: int, label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """:func:`cross_entropy`'s ``(loss, ignored, bad)`` from the rows' :func:`softmax_stats` over all C
    columns (``x_sum`` is read only with label smoothing)."""
    _, ignored, bad = target_masks(targets, num_classes, ignore_index)
    # A +inf logit makes F.cross_entropy's log_softmax inf - inf = NaN; the stable logsumexp is +inf only then.
    loss = torch.where(lse == float("inf"), float("nan"), lse - x_target)
    if label_smoothing > 0:
        smooth = lse - x_sum / num_classes  # mean_c (lse - x_c) >= 0: -inf only if the sum overflowed, as F's
        smooth = torch.where(smooth == float("-inf"), float("inf"), smooth)
        loss = (1 - label_smoothing) * loss + label_smoothing * smooth
    loss = torch.where(ignored, torch.zeros_like(loss), loss)
    loss = torch.where(bad, torch.full_like(loss, float("nan")), loss)
    return loss, ignored, bad


def selection_probability(pct: torch.Tensor, beta: float, floor: float) -> torch.Tensor:
    """``max(floor, pct ** beta)`` in float32, computed the way the kernel does."""
    whole = integer_beta(beta)
    if whole:
        p = pct
        for _ in range(whole - 1):
            p = p * pct
    else:
        p = torch.exp2(beta * torch.log2(pct))
    return torch.clamp_min(p, floor)


def percentile(loss: torch.Tensor, history: torch.Tensor, n_hist: torch.Tensor) -> torch.Tensor:
    """``#{h in history[:n_hist] : h < loss_i} / n_hist`` per row, 1 where the history is empty."""
    size = history.numel()
    # NaN (never pushed, but writable by hand) is below no loss: padded with the dead slots as +inf.
    live = (torch.arange(size, device=history.device) < n_hist) & ~torch.isnan(history)
    ordered = torch.sort(torch.where(live, history, torch.full_like(history, float("inf")))).values
    # searchsorted(side="left") counts entries strictly below loss_i; padding (+inf) never counts.
    below = torch.searchsorted(ordered, loss.contiguous(), side="left").clamp_max(n_hist)
    denominator = n_hist.clamp_min(1).to(torch.float32)
    return torch.where(n_hist > 0, below.to(torch.float32) / denominator, torch.ones_like(loss))


def select_sb(
    loss: torch.Tensor,
    ignored: torch.Tensor,
    bad: torch.Tensor,
    history: torch.Tensor,
    meta: torch.Tensor,
    beta: float = 1.0,
    floor: float = 0.0,
    prime: int = 0,
    fixed_prob: float = -1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Policy "sb" on given per-row losses; updates ``history`` and ``meta`` in place.

    ``fixed_prob >= 0`` replaces the percentile rule by that constant (policy "uniform"); the draw,
    compaction and history push are the same.

    Returns ``(indices, count, loss, prob)`` as documented on :class:`sbkernels.Selection`.
    """
    loss = loss.float()
    n, size = loss.numel(), history.numel()
    pushed, step, seed = meta[META_PUSHED], meta[META_STEP], meta[META_SEED]
    valid, nonfinite = row_validity(loss, ignored, bad)

    if fixed_prob >= 0:
        prob = torch.full_like(loss, fixed_prob)
    else:
        prob = selection_probability(percentile(loss, history, pushed.clamp_max(size)), beta, floor)
        prob = torch.where(pushed < prime, torch.ones_like(prob), prob)
    prob = torch.where(valid, prob, torch.zeros_like(prob))
    selected = valid & (philox_uniform(seed, step, n).to(loss.device) < prob)
    indices, count = compact(selected)

    # Push the valid losses in row order; of more than R, only the last R land (each slot written once).
    valid_long = valid.long()
    rank = torch.cumsum(valid_long, 0) - valid_long
    n_valid = valid_long.sum()
    push = valid & (rank >= n_valid - size)
    slot = torch.where(push, (pushed + rank) % size, size)
    ring = torch.cat([history, history.new_zeros(1)])
    ring.scatter_(0, slot, torch.where(push, loss, torch.zeros_like(loss)))
    history.copy_(ring[:size])

    advance_counters(meta, pushed=n_valid, nonfinite=nonfinite.sum(), bad_targets=bad.sum())
    return indices, count, loss, prob


def importance_score(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``||softmax(x_i) - onehot(t_i)||_2`` per row in float32 (0 for ignored rows, NaN for bad targets).

    Written as ``sqrt((sum_{c != t} p_c)^2 + sum_{c != t} p_c^2)``: no cancellation when p_t is near 1.
    """
    x = logits.float()
    num_classes = x.shape[1]
    t, ignored, bad = target_masks(targets, num_classes, ignore_index)
    p = torch.softmax(x, dim=1)
    other = p.scatter(1, t.clamp(0, num_classes - 1).unsqueeze(1), 0.0)
    score = torch.sqrt(other.sum(dim=1) ** 2 + (other * other).sum(dim=1))
    score = torch.where(ignored, torch.zeros_like(score), score)
    return torch.where(bad, torch.full_like(score, float("nan")), score)


def row_stats(
    logits: torch.Tensor | None,
    targets: torch.Tensor | None,
    losses: torch.Tensor | None,
    meta: torch.Tensor,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    row_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, importance score, Philox uniform) per row: what the row-stats kernel computes."""
    if logits is not None:
        assert targets is not None
        loss = cross_entropy(logits, targets, ignore_index, label_smoothing)[0]
        score = importance_score(logits, targets, ignore_index)
    else:
        assert losses is not None
        loss = losses.to(torch.float32, copy=True)
        score = torch.zeros_like(loss)
    return loss, score, philox_uniform(meta[META_SEED], meta[META_STEP], loss.numel(), row_offset)


def residuals(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r, loss)``: bias gradients ``softmax(x_i) - onehot(t_i)`` (N, C) float32 and the losses; both 0 for
    ignored rows and rows with bad targets (what the residual kernel computes)."""
    x = logits.float()
    num_classes = x.shape[1]
    t, ignored, bad = target_masks(targets, num_classes, ignore_index)
    usable = ~ignored & ~bad
    p = torch.softmax(x, dim=1)
    onehot = torch.zeros_like(p).scatter_(1, t.clamp(0, num_classes - 1).unsqueeze(1), 1.0)
    r = torch.where(usable[:, None], p - onehot, torch.zeros_like(p))
    x_target = x.gather(1, t.clamp(0, num_classes - 1)[:, None])[:, 0]
    return r, torch.where(usable, torch.logsumexp(x, 1) - x_target, 0.0)


def token_losses(
    logits: torch.Tensor, labels: torch.Tensor, shift: bool = True, ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:  # fmt: skip
    """(B, T') float32 per-token losses of LM logits (B, T, V) (SPEC section 9): with ``shift`` position t is
    scored against label t + 1 and T' = T - 1. Each token's loss is :func:`cross_entropy`'s."""
    batch, length, vocab = logits.shape
    offset = 1 if shift else 0
    scored = max(length - offset, 0)
    rows = logits[:, :scored].reshape(batch * scored, vocab)
    targets = labels[:, offset : offset + scored].reshape(batch * scored)
    return cross_entropy(rows, targets, ignore_index, label_smoothing)[0].view(batch, scored)


def head_logits(logits: torch.Tensor, softcap: float | None, logit_scale: float) -> torch.Tensor:
    """The logits a soft-capped or scaled LM head trains on (SPEC section 9): ``logit_scale * x`` (Cohere's
    ``logit_scale``; Granite divides by ``logits_scaling``), then ``softcap * tanh(. / softcap)`` (Gemma-2's
    ``final_logit_softcapping``), in float32. Unchanged logits when neither is set."""
    if softcap is None and logit_scale == 1.0:
        return logits
    x = logits.float() * logit_scale
    return x if softcap is None else softcap * torch.tanh(x / softcap)


def reduce_sequences(
    token_loss: torch.Tensor, scored_labels: torch.Tensor, vocab: int, ignore_index: int, reduction: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, ignored, bad)`` per sequence from its token losses and the labels they were scored against.

    ``"mean"`` divides the sum of the valid tokens' losses by their number, ``"sum"`` does not. A sequence
    with no valid token is ignored (loss 0); one with an out-of-range label is bad (NaN); a non-finite token
    loss makes the sequence's loss non-finite.
    """
    _, ignored_token, bad_token = target_masks(scored_labels, vocab, ignore_index)
    valid_token = ~ignored_token & ~bad_token
    total = torch.where(valid_token, token_loss, 0.0).sum(dim=1)
    count = valid_token.sum(dim=1)
    loss = total / count.clamp_min(1) if reduction == "mean" else total
    bad = bad_token.any(dim=1)
    ignored = (count == 0) & ~bad
    loss = torch.where(bad, float("nan"), torch.where(ignored, 0.0, loss))
    return loss, ignored, bad


def sequence_losses(
    logits: torch.Tensor, labels: torch.Tensor, shift: bool = True, ignore_index: int = -100,
    reduction: str = "mean", label_smoothing: float = 0.0, softcap: float | None = None, logit_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(loss, ignored, bad)`` per sequence of LM logits (B, T, V) and labels (B, T) (SPEC section 9), of a
    capped or scaled head's logits (:func:`head_logits`) when ``softcap`` or ``logit_scale`` is given."""
    token_loss = token_losses(head_logits(logits, softcap, logit_scale), labels, shift, ignore_index, label_smoothing)
    offset = 1 if shift else 0
    scored_labels = labels[:, offset : offset + token_loss.shape[1]]
    return reduce_sequences(token_loss, scored_labels, logits.shape[2], ignore_index, reduction)
