"""Checkpoints: atomic replacement, and every random state restored."""

import random

import numpy as np
import pytest
import torch

from labml_nn_switch import checkpoint as ck


def test_save_load_round_trip(tmp_path):
    path = tmp_path / 'run' / 'checkpoints' / ck.CHECKPOINT_FILE
    state = {'step': 7, 'model': {'w': torch.arange(6.).view(2, 3)}, 'history': [{'step': 5, 'loss': 1.5}],
             'itos': ['a', 'b'], 'rng': ck.rng_state()}
    ck.save_checkpoint(path, state)
    loaded = ck.load_checkpoint(path)
    assert loaded['step'] == 7 and loaded['history'] == state['history'] and loaded['itos'] == ['a', 'b']
    assert torch.equal(loaded['model']['w'], state['model']['w'])
    # Only the checkpoint is left in the folder: no temporary files
    assert [p.name for p in path.parent.iterdir()] == [ck.CHECKPOINT_FILE]
    # It is found from the run folder, the checkpoints folder or the file
    assert ck.find_checkpoint(tmp_path / 'run') == path
    assert ck.find_checkpoint(path.parent) == path
    assert ck.find_checkpoint(path) == path
    assert ck.find_checkpoint(tmp_path / 'elsewhere') is None
    assert ck.latest_checkpoint(tmp_path) == path


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / ck.CHECKPOINT_FILE
    ck.save_checkpoint(path, {'step': 1})

    def broken_save(obj, f):
        f.write(b'half a checkpoint')
        raise KeyboardInterrupt  # killed in the middle of writing

    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(path, {'step': 2})
    monkeypatch.undo()
    assert ck.load_checkpoint(path)['step'] == 1
    assert [p.name for p in tmp_path.iterdir()] == [ck.CHECKPOINT_FILE]


def test_random_states_are_restored(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    ck.save_checkpoint(tmp_path / 'c.pt', {'rng': ck.rng_state()})
    expected = (torch.rand(3), random.random(), np.random.rand(2))
    # Disturb every generator, then restore from the file
    torch.rand(10), random.random(), np.random.rand(5)
    ck.set_rng_state(ck.load_checkpoint(tmp_path / 'c.pt')['rng'])
    got = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(expected[0], got[0]) and expected[1] == got[1] and np.array_equal(expected[2], got[2])
