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
