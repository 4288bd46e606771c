import numpy as np
import pytest
import torch

from utils.buffer import ReservoirBuffer


def sequential_reference(size, stream_batches, generator):
    """Plain one-by-one reservoir sampling fed with the same draws as the vectorised buffer."""
    store = [None] * size
    n = 0
    for batch in stream_batches:
        ns = n + torch.arange(len(batch))
        draws = (torch.randint(0, 2 ** 62, (len(batch),), generator=generator) % (ns + 1)).tolist()
        for item, j in zip(batch.tolist(), draws):
            if n < size:
                store[n] = item
            elif j < size:
                store[j] = item
            n += 1
    return store


@pytest.mark.parametrize("size,batch", [(10, 3), (7, 7), (5, 16), (50, 13)])
def test_vectorised_insertion_matches_sequential_reservoir_on_same_draws(size, batch):
    stream = torch.arange(400)
    buf = ReservoirBuffer(size, "cpu", torch.Generator().manual_seed(1))
    for chunk in stream.split(batch):
        buf.add(examples=chunk, labels=chunk % 10)
    expected = sequential_reference(size, stream.split(batch), torch.Generator().manual_seed(1))
    assert buf.fields["examples"][:size].tolist() == expected
    assert len(buf) == size and buf.num_seen == 400
    assert torch.equal(buf.fields["labels"][:size], buf.fields["examples"][:size] % 10)


def test_inclusion_probabilities_are_uniform():
    """Every stream item ends in the buffer with probability size / N (reservoir property)."""
    size, n_items, batch, trials = 20, 200, 32, 3000
    counts = np.zeros(n_items)
    gen = torch.Generator().manual_seed(0)
    stream = torch.arange(n_items)
    for _ in range(trials):
        buf = ReservoirBuffer(size, "cpu", gen)
        for chunk in stream.split(batch):
            buf.add(examples=chunk)
        stored = buf.fields["examples"][:size]
        assert len(set(stored.tolist())) == size  # no item stored twice
        counts[stored.numpy()] += 1
    p = size / n_items
    sd = np.sqrt(trials * p * (1 - p))
    z = (counts - trials * p) / sd
    # With a fixed seed this is deterministic; the bounds are 6 sigma per item and
    # 4 sigma for the average over early vs late items, far outside seed noise.
    assert np.abs(z).max() < 6
    early, late = counts[:n_items // 2].mean(), counts[n_items // 2:].mean()
    assert abs(early - late) < 4 * sd / np.sqrt(n_items / 2) * np.sqrt(2)
    # the spread matches the binomial's (a biased scheme shows up here)
    assert 0.8 < z.std() < 1.2


def test_fills_in_order_until_full():
    buf = ReservoirBuffer(10, "cpu", torch.Generator().manual_seed(0))
    buf.add(examples=torch.arange(4))
    buf.add(examples=torch.arange(4, 10))
    assert buf.fields["examples"][:10].tolist() == list(range(10))


def test_sample_is_without_replacement_and_only_from_filled_slots():
    buf = ReservoirBuffer(100, "cpu", torch.Generator().manual_seed(0))
    buf.add(examples=torch.arange(30), labels=torch.arange(30))
    x, y = buf.sample(25, "examples", "labels")
    assert len(set(x.tolist())) == 25 and set(x.tolist()) <= set(range(30))
    assert torch.equal(x, y)
    x, = buf.sample(1000, "examples")
    assert sorted(x.tolist()) == list(range(30))


def test_fields_keep_shape_and_dtype():
    buf = ReservoirBuffer(8, "cpu", torch.Generator().manual_seed(0))
    buf.add(examples=torch.zeros(5, 1, 4, 4, dtype=torch.uint8), logits=torch.randn(5, 10))
    assert buf.fields["examples"].dtype == torch.uint8
    assert buf.fields["examples"].shape == (9, 1, 4, 4)
    assert buf.fields["logits"].shape == (9, 10)


def test_bad_use_is_refused():
    with pytest.raises(ValueError, match="positive"):
        ReservoirBuffer(0, "cpu")
    buf = ReservoirBuffer(4, "cpu")
    with pytest.raises(RuntimeError, match="empty"):
        buf.sample(2, "examples")
    with pytest.raises(ValueError, match="different batch sizes"):
        buf.add(examples=torch.zeros(3), labels=torch.zeros(2))
    buf.add(examples=torch.zeros(3))
    with pytest.raises(ValueError, match="buffer stores"):
        buf.add(examples=torch.zeros(3), labels=torch.zeros(3))


def test_state_dict_round_trip():
    buf = ReservoirBuffer(6, "cpu", torch.Generator().manual_seed(0))
    buf.add(examples=torch.arange(9))
    other = ReservoirBuffer(6, "cpu")
    other.load_state_dict(buf.state_dict())
    assert other.num_seen == 9 and torch.equal(other.fields["examples"], buf.fields["examples"])


# ----------------------------------------------------------------------------- class-balanced buffer

from collections import Counter  # noqa: E402

from utils.buffer import ClassBalancedBuffer  # noqa: E402
from utils.errors import UserError  # noqa: E402


def greedy_reference(size, stream_batches, generator):
    """GDumb's greedy balancing sampler, one sample at a time, fed with the same draws as the buffer.

    A sample enters while its class holds fewer than size // (classes seen so far, counted per batch)
    entries: into the next free slot, or, when full, replacing the entry with the lowest key (a fresh
    uniform key per slot and batch) of the largest class (the lowest class index among ties).
    """
    slots, seen = [], set()
    for items, labels in stream_batches:
        key = torch.rand(size, dtype=torch.float64, generator=generator).tolist()
        seen |= set(labels.tolist())
        cap = size // len(seen)
        for item, y in zip(items.tolist(), labels.tolist()):
            counts = Counter(label for _, label in slots)
            if counts[y] >= cap:
                continue
            if len(slots) < size:
                slots.append((item, y))
                continue
            largest = max(counts.values())
            victim_class = min(c for c, n in counts.items() if n == largest)
            members = [s for s, (_, label) in enumerate(slots) if label == victim_class]
            slots[min(members, key=lambda s: (key[s], s))] = (item, y)
    return slots


def class_incremental(n_items, n_classes, per_task, seed):
    """Labels in tasks of ``per_task`` consecutive classes, shuffled within each task (a CL stream)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_items) * n_classes // n_items
    tasks = labels // per_task
    order = torch.cat([torch.nonzero(tasks == t).flatten()[torch.randperm(int((tasks == t).sum()), generator=gen)]
                       for t in range(int(tasks.max()) + 1)])
    return labels[order]


STREAMS = {
    "tasks of 2 classes": lambda: class_incremental(600, 10, 2, 0),
    "tasks of 3 classes": lambda: class_incremental(500, 9, 3, 1),
    "random labels": lambda: torch.randint(0, 7, (400,), generator=torch.Generator().manual_seed(2)),
    "classes arriving one by one": lambda: class_incremental(300, 6, 1, 3),
}


@pytest.mark.parametrize("stream", sorted(STREAMS))
@pytest.mark.parametrize("size,batch", [(20, 10), (23, 7), (50, 32), (11, 1), (64, 13)])
def test_greedy_insertion_matches_sequential_reference_on_same_draws(stream, size, batch):
    labels = STREAMS[stream]()
    classes = int(labels.max()) + 1
    if size < classes:
        pytest.skip("fewer slots than classes is refused")
    items = torch.arange(len(labels))
    buf = ClassBalancedBuffer(size, classes, "cpu", torch.Generator().manual_seed(5))
    for x, y in zip(items.split(batch), labels.split(batch)):
        buf.add(examples=x, labels=y)
    expected = greedy_reference(size, zip(items.split(batch), labels.split(batch)), torch.Generator().manual_seed(5))
    n = len(buf)
    assert n == len(expected)
    assert buf.fields["examples"][:n].tolist() == [item for item, _ in expected]
    assert buf.fields["labels"][:n].tolist() == [y for _, y in expected]
    assert buf.counts.tolist() == [sum(1 for _, y in expected if y == c) for c in range(classes)]
    assert buf.num_seen == len(labels)


def test_greedy_memory_ends_class_balanced():
    """After a class-incremental stream every class holds size // classes or one more entry."""
    labels = class_incremental(2000, 10, 2, 4)
    buf = ClassBalancedBuffer(53, 10, "cpu", torch.Generator().manual_seed(0))
    for y in labels.split(10):
        buf.add(examples=y.float(), labels=y)
    counts = torch.bincount(buf.fields["labels"][:len(buf)], minlength=10)
    assert len(buf) == 53 and counts.min() >= 53 // 10 and counts.max() <= 53 // 10 + 1
    assert torch.equal(counts, buf.counts)


def test_greedy_replaced_entries_are_uniform_within_their_class():
    """Which entry of the largest class makes room is uniform: every first-task item survives equally often."""
    trials, hits = 2000, torch.zeros(40)
    gen = torch.Generator().manual_seed(1)
    for _ in range(trials):
        buf = ClassBalancedBuffer(20, 2, "cpu", gen)
        buf.add(examples=torch.arange(40), labels=torch.zeros(40, dtype=torch.long))    # 20 of class 0 kept
        buf.add(examples=torch.arange(40, 50), labels=torch.ones(10, dtype=torch.long))  # 10 of them replaced
        kept = buf.fields["examples"][:20]
        hits[kept[kept < 40]] += 1
    assert hits[20:].sum() == 0                     # only the first 20 ever entered
    p = 10 / 20
    z = (hits[:20] - trials * p) / (trials * p * (1 - p)) ** 0.5
    assert z.abs().max() < 5


def test_add_balanced_takes_rows_in_order_within_quota_and_free_slots():
    buf = ClassBalancedBuffer(10, 3, "cpu")
    buf.add_balanced(torch.tensor([2, 1, 0]), examples=torch.arange(6), labels=torch.tensor([0, 1, 0, 0, 1, 2]))
    assert buf.fields["examples"][:len(buf)].tolist() == [0, 1, 2]
    quota = torch.tensor([5, 5, 5])
    buf.add_balanced(quota, examples=torch.arange(10, 20), labels=torch.tensor([2] * 10))
    assert len(buf) == 8 and buf.fields["examples"][:8].tolist() == [0, 1, 2, 10, 11, 12, 13, 14]
    buf.add_balanced(quota, examples=torch.arange(20, 25), labels=torch.tensor([1] * 5))
    assert len(buf) == 10 and buf.fields["examples"][8:10].tolist() == [20, 21]  # full: the rest is dropped
    assert buf.counts.tolist() == [2, 3, 5]


def test_shrink_keeps_the_oldest_entries_of_each_class_in_slot_order():
    buf = ClassBalancedBuffer(12, 3, "cpu")
    labels = torch.tensor([2, 0, 0, 1, 2, 0, 1, 2, 2, 0])
    buf.add_balanced(torch.full((3,), 10), examples=torch.arange(10), labels=labels)
    buf.shrink(2)
    expected = []
    for i, y in enumerate(labels.tolist()):
        if sum(1 for j in expected if labels[j] == y) < 2:
            expected.append(i)
    assert buf.fields["examples"][:len(buf)].tolist() == expected
    assert buf.counts.tolist() == [2, 2, 2] and len(buf) == 6
    buf.add_balanced(torch.tensor([0, 0, 6]), examples=torch.arange(100, 106), labels=torch.full((6,), 2))
    assert len(buf) == 12
    buf.shrink(3)  # class 2's oldest three: its two survivors, then the first newcomer
    assert buf.fields["examples"][:len(buf)].tolist() == expected + [100]


def test_class_balanced_state_dict_round_trip_and_refusals():
    buf = ClassBalancedBuffer(6, 3, "cpu", torch.Generator().manual_seed(0))
    buf.add(examples=torch.arange(9), labels=torch.arange(9) % 3)
    other = ClassBalancedBuffer(6, 3, "cpu", torch.Generator().manual_seed(0))
    other.load_state_dict(buf.state_dict())
    assert len(other) == len(buf) and other.num_seen == 9
    assert torch.equal(other.fields["examples"], buf.fields["examples"]) and torch.equal(other.counts, buf.counts)
    with pytest.raises(UserError, match="at least one slot per class"):
        ClassBalancedBuffer(4, 10, "cpu")
    with pytest.raises(ValueError, match="labels"):
        ClassBalancedBuffer(4, 2, "cpu").add(examples=torch.zeros(3))
