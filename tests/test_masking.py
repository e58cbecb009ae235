"""Span masking: rate, equal counts, minimum spans, padding, reproducibility."""

import torch

from hubert_lit.models.masking import compute_span_mask


def span_starts(row: torch.Tensor) -> int:
    """Number of maximal runs of True in a 1-D bool tensor."""
    r = row.int()
    return int((r[1:] > r[:-1]).sum() + r[0])


def test_masked_fraction_near_half_at_500_frames():
    g = torch.Generator().manual_seed(0)
    lengths = torch.full((8,), 500)
    fractions = [compute_span_mask(lengths, 500, generator=g).float().mean().item() for _ in range(40)]
    mean = sum(fractions) / len(fractions)
    # fairseq/torchaudio give 52.3 % at T=500, B=8 (1 - 0.92^10 = 56.6 % before equalising counts)
    assert 0.49 < mean < 0.555, mean


def test_same_count_per_row_and_padding_never_masked():
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([500, 300, 123, 480])
    mask = compute_span_mask(lengths, 500, generator=g)
    counts = mask.sum(1)
    assert torch.all(counts == counts[0]) and counts[0] > 0
    padded = torch.arange(500)[None, :] >= lengths[:, None]
    assert not mask[padded].any()


def test_min_spans_on_short_utterances():
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        # 0.8 * 15 / 10 < 2 spans expected, but min_masks=2 forces two starts (overlap can merge them)
        mask = compute_span_mask(torch.tensor([40]), 40, mask_prob=0.1, generator=g)
        assert mask.sum() >= 10
    spans = [
        span_starts(compute_span_mask(torch.tensor([400]), 400, mask_prob=0.0, generator=g)[0])
        for _ in range(20)
    ]
    assert max(spans) == 2 and min(spans) >= 1  # two spans, merged only when they overlap
    assert not compute_span_mask(torch.tensor([0, 5]), 8, generator=g)[0].any()


def test_spans_are_mask_length_runs_without_same_count():
    g = torch.Generator().manual_seed(3)
    mask = compute_span_mask(torch.tensor([1000]), 1000, mask_prob=0.05, generator=g, same_count=False)[0]
    runs = []
    count = 0
    for v in mask.tolist() + [False]:
        if v:
            count += 1
        elif count:
            runs.append(count)
            count = 0
    assert runs and all(r >= 10 for r in runs)  # every run is one span or several overlapping ones
    assert sum(runs) <= 10 * max(2, int(0.05 * 1000 / 10 + 1))


def test_generator_makes_mask_reproducible():
    lengths = torch.tensor([200, 150])
    a = compute_span_mask(lengths, 200, generator=torch.Generator().manual_seed(5))
    b = compute_span_mask(lengths, 200, generator=torch.Generator().manual_seed(5))
    c = compute_span_mask(lengths, 200, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_empty_row_does_not_switch_masking_off_for_the_batch():
    # a row with 0 valid frames (< 400 samples) has nothing to mask; the other rows keep their masks
    g = torch.Generator().manual_seed(7)
    mask = compute_span_mask(torch.tensor([200, 0, 150]), 200, generator=g)
    counts = mask.sum(1)
    assert counts[1] == 0
    assert counts[0] == counts[2] and counts[0] >= 20  # at least min_masks spans of 10 frames
    assert not compute_span_mask(torch.tensor([0, 0]), 8, generator=g).any()
