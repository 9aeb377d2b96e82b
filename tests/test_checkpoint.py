"""Checkpoints: atomic writes, the last two kept, one clear error for a damaged file, every random state restored."""

import random

import pytest
import torch

from labml_nn_switch import checkpoint as ck


def test_save_load_round_trip(tmp_path):
    folder = tmp_path / 'run' / 'checkpoints'
    state = {'step': 7, 'model': {'w': torch.arange(6.).view(2, 3)}, 'history': [{'step': 5, 'loss': 1.5}],
             'itos': ['a', 'b'], 'rng': ck.rng_state()}
    path = ck.save_checkpoint(folder, 7, state)
    assert path == folder / 'step_00000007.pt' and ck.checkpoint_step(path) == 7
    loaded = ck.load_checkpoint(path)
    assert loaded['step'] == 7 and loaded['history'] == state['history'] and loaded['itos'] == ['a', 'b']
    assert torch.equal(loaded['model']['w'], state['model']['w'])
    # Only the checkpoint is left in the folder: no temporary files
    assert [p.name for p in folder.iterdir()] == [path.name]
    # It is found from the run folder, the checkpoints folder or the file
    assert ck.find_checkpoint(tmp_path / 'run') == path
    assert ck.find_checkpoint(folder) == path
    assert ck.find_checkpoint(path) == path
    assert ck.find_checkpoint(tmp_path / 'elsewhere') is None
    assert ck.latest_checkpoint(tmp_path) == path


def test_the_last_two_are_kept_and_the_newest_is_found(tmp_path):
    for step in (5, 10, 100, 15):
        ck.save_checkpoint(tmp_path, step, {'step': step})
    # Ordered by step, not by name or time: 100 is the newest step, 15 the last written
    assert [ck.checkpoint_step(p) for p in ck.checkpoints_in(tmp_path)] == [15, 100]
    assert ck.find_checkpoint(tmp_path) == tmp_path / 'step_00000100.pt'


def test_a_failed_save_keeps_the_previous_checkpoints(tmp_path, monkeypatch):
    ck.save_checkpoint(tmp_path, 1, {'step': 1})
    ck.save_checkpoint(tmp_path, 2, {'step': 2})

    def broken_save(obj, f):
        f.write(b'half a checkpoint')
        raise KeyboardInterrupt  # killed in the middle of writing

    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path, 3, {'step': 3})
    monkeypatch.undo()
    # Both earlier checkpoints are there and whole; nothing else is
    assert sorted(p.name for p in tmp_path.iterdir()) == ['step_00000001.pt', 'step_00000002.pt']
    assert ck.load_checkpoint(ck.find_checkpoint(tmp_path))['step'] == 2


@pytest.mark.parametrize('damage, says', [
    (lambda b: b'', 'is empty (0 bytes)'),
    (lambda b: b[:len(b) // 2], 'is truncated or not a checkpoint'),
    (lambda b: b'\x00garbage' * 100, 'is truncated or not a checkpoint'),
    (lambda b: None, 'does not exist'),
])
def test_a_damaged_checkpoint_is_one_clear_error_naming_the_previous_one(tmp_path, damage, says):
    previous = ck.save_checkpoint(tmp_path, 10, {'step': 10, 'w': torch.randn(1000)})
    latest = ck.save_checkpoint(tmp_path, 20, {'step': 20, 'w': torch.randn(1000)})
    data = damage(latest.read_bytes())
    if data is None:
        latest.unlink()
    else:
        latest.write_bytes(data)
    with pytest.raises(ck.CheckpointError) as error:
        ck.load_checkpoint(latest)
    message = str(error.value)
    assert '\n' not in message and str(latest) in message and says in message
    assert f'the previous one is {str(previous)!r}' in message
    # ... which still loads
    assert ck.load_checkpoint(previous)['step'] == 10


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    torch.save([1, 2, 3], tmp_path / 'list.pt')
    with pytest.raises(ck.CheckpointError, match='not a checkpoint of this experiment'):
        ck.load_checkpoint(tmp_path / 'list.pt')


def test_random_states_are_restored(tmp_path):
    torch.manual_seed(1), random.seed(2)
    ck.save_checkpoint(tmp_path, 0, {'step': 0, 'rng': ck.rng_state()})
    expected = (torch.rand(3), random.random())
    # Disturb every generator, then restore from the file
    torch.rand(10), random.random()
    ck.set_rng_state(ck.load_checkpoint(ck.find_checkpoint(tmp_path))['rng'])
    got = (torch.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and expected[1] == got[1]
