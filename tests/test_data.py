"""The data: finding and verifying the text, the seeded resumable window order, and fixed validation batches."""

import hashlib

import pytest
import torch

from labml_nn_switch import data


def test_sampler_batches_are_shifted_windows():
    tokens = torch.arange(1000)
    sampler = data.WindowSampler(tokens, seq_len=16, batch_size=4, seed=0)
    x, y = sampler.next_batch()
    assert x.shape == y.shape == (16, 4)
    # Consecutive characters, targets one ahead
    assert torch.equal(x[1:], x[:-1] + 1) and torch.equal(y, x + 1)


def test_sampler_state_resumes_the_same_order():
    tokens = torch.arange(300)
    a = data.WindowSampler(tokens, seq_len=10, batch_size=4, seed=5)
    # Run through a few epochs (29 windows an epoch, 7 batches of 4)
    for _ in range(17):
        a.next_batch()
    b = data.WindowSampler(tokens, seq_len=10, batch_size=4, seed=5)
    b.load_state_dict(a.state_dict())
    for _ in range(20):
        xa, _ = a.next_batch()
        xb, _ = b.next_batch()
        assert torch.equal(xa, xb)
    assert a.epoch > 2
    # Another seed, another order
    c = data.WindowSampler(tokens, seq_len=10, batch_size=4, seed=6)
    assert not torch.equal(c.next_batch()[0], data.WindowSampler(tokens, seq_len=10, batch_size=4,
                                                                 seed=5).next_batch()[0])


def test_an_epoch_visits_each_window_once():
    tokens = torch.arange(401)
    sampler = data.WindowSampler(tokens, seq_len=10, batch_size=1, seed=0)
    starts = []
    while sampler.epoch == 0:
        starts.append(int(sampler.next_batch()[0][0, 0]))
    starts = starts[:-1]  # the last one began epoch 1
    assert len(set(starts)) == len(starts) and len({s % 10 for s in starts}) == 1


def test_too_little_text_for_a_batch():
    with pytest.raises(data.DataError, match='batch_size=8'):
        data.WindowSampler(torch.arange(50), seq_len=10, batch_size=8, seed=0)


def test_fixed_windows_cover_the_text():
    batches = data.fixed_windows(torch.arange(100), seq_len=8, batch_size=3, n_batches=2)
    assert len(batches) == 2 and all(x.shape == y.shape == (8, 3) for x, y in batches)
    assert int(batches[0][0][0, 0]) == 0 and int(batches[-1][1][-1, -1]) == 99
    with pytest.raises(data.DataError, match='seq_len=200'):
        data.fixed_windows(torch.arange(100), seq_len=200, batch_size=1, n_batches=1)


def test_download_is_verified(tmp_path):
    source = tmp_path / 'source.txt'
    source.write_text('First Citizen:\nBefore we proceed any further, hear me speak.\n')
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = tmp_path / 'data' / data.TINY_SHAKESPEARE_FILE
    # Not there: downloaded (a file:// URL stands in for the web), verified, moved into place
    found = data.find_text_file(None, data_dir=dest.parent, url=source.as_uri(), sha256=sha)
    assert found == dest and dest.read_text() == source.read_text()
    # A wrong hash: refused, and nothing is left behind
    dest.unlink()
    with pytest.raises(data.DataError, match='sha256'):
        data.find_text_file(None, data_dir=dest.parent, url=source.as_uri(), sha256='0' * 64)
    assert not list(dest.parent.iterdir())
    # Downloads switched off: says where to put the file
    with pytest.raises(data.DataError, match='put the file there'):
        data.find_text_file(None, data_dir=dest.parent, allow_download=False)


def test_char_dataset_vocabulary():
    text = 'abcabcxyz' * 20
    dataset = data.char_dataset(text)
    assert dataset.itos == sorted(set(text))
    assert dataset.n_tokens == 6
    assert ''.join(dataset.itos[i] for i in dataset.encode('cab')) == 'cab'
    assert len(dataset.train) == 162 and len(dataset.valid) == 18
