"""The routing view: routing a text in the text's order, the per-expert statistics, the labml
log reader, the HTML fragment, and the command's errors."""

import dataclasses
import json
import re
from html.parser import HTMLParser

import pytest
import torch

from labml_nn_switch import configs
from labml_nn_switch import routing_view as rv
from labml_nn_switch.checkpoint import save_checkpoint
from labml_nn_switch.experiment import build_model

# A text of its own (no data file needed), long enough for a validation split of a few windows
TEXT = ('First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n' * 40)
TINY = dict(n_layers=2, d_model=16, n_heads=2, d_ff=32, n_experts=4, seq_len=16, batch_size=4)


def tiny_state(**overrides) -> dict:
    """A checkpoint's state with a freshly initialised tiny model and a made-up history."""
    values = {**configs.defaults(), **TINY, **overrides}
    switch = dataclasses.asdict(configs.switch_config(values))
    itos = sorted(set(TEXT))
    torch.manual_seed(0)
    model = build_model(values, switch=configs.switch_config(values), n_vocab=len(itos))
    history = [{'step': s, 'loss.train': 1.0, 'route_fraction': [[0.1, 0.2, 0.3, 0.4], [0.25] * 4]}
               for s in (10, 20)]
    return {'step': 20, 'settings': {k: v for k, v in values.items() if k not in switch}, 'switch': switch,
            'itos': itos, 'model': model.state_dict(), 'history': history}


def save_run(folder, **overrides):
    """A run folder with the tiny model's checkpoint."""
    save_checkpoint(folder / 'checkpoints', 20, tiny_state(**overrides))


def trained(tmp_path, **overrides) -> rv.Trained:
    """The tiny model as `load_trained` gives it, from a checkpoint in a run folder."""
    save_run(tmp_path / 'run', **overrides)
    return rv.load_trained(str(tmp_path / 'run'))


def test_route_puts_tokens_back_in_text_order(tmp_path):
    t = trained(tmp_path)
    model, state = t.model, {'itos': t.itos}
    ids = torch.tensor([state['itos'].index(c) for c in TEXT[:16 * 6]])
    # One window a batch is trivially in text order; six windows a batch must agree with it
    alone = rv.route(model, ids, seq_len=16, batch_size=1, capacity_factor=100.0)
    together = rv.route(model, ids, seq_len=16, batch_size=6, capacity_factor=100.0)
    assert len(alone) == 2
    for a, b in zip(alone, together):
        assert a['expert'].tolist() == b['expert'].tolist()
        torch.testing.assert_close(a['gate'], b['gate'])
        assert a['kept'].all() and b['kept'].all()
    # A small capacity drops tokens, and says which
    tight = rv.route(model, ids, seq_len=16, batch_size=6, capacity_factor=0.5)
    assert not tight[0]['kept'].all()
    assert tight[0]['expert'].tolist() == alone[0]['expert'].tolist()


def test_expert_statistics_by_hand():
    routed = {'expert': torch.tensor([0, 1, 0, 1, 0, 2]), 'kept': torch.tensor([True, True, False, True, True, True]),
              'gate': torch.tensor([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])}
    stats = rv.expert_statistics('ababac', routed, n_experts=3, min_count=1, bins=10)
    assert stats['share'] == pytest.approx([0.5, 2 / 6, 1 / 6])
    assert stats['mean_gate'] == pytest.approx([0.7, 0.7, 1.0])
    assert stats['dropped'] == pytest.approx([1 / 3, 0, 0])
    # Every 'a' goes to expert 0, every 'b' to 1, 'c' to 2
    assert [p[:2] for p in stats['prefers'][0]] == [['a', 1.0]]
    assert [p[:2] for p in stats['prefers'][1]] == [['b', 1.0]]
    assert stats['prefers'][2] == [['c', 1.0, 1]]
    assert [sum(c) for c in stats['gate_hist']['counts']] == [3, 2, 1]


def test_read_labml_log(tmp_path):
    (tmp_path / 'log.jsonl').write_text(json.dumps({'track': {'route.min.0': [[10, [0.1, 0.3]], [20, [0.2]]]}})
                                        + '\n' + json.dumps({'track': {'route.min.0': [[30, [0.4]]]}}) + '\n')
    assert rv.read_labml_log(tmp_path) == {'route.min.0': [(10, pytest.approx(0.2)), (20, 0.2), (30, 0.4)]}
    assert rv.read_labml_log(tmp_path / 'missing') == {}
    (tmp_path / 'log.jsonl').write_text('{"track": {}}\nnot json\n')
    with pytest.raises(rv.ViewError, match=r'log\.jsonl:2: not a JSON line'):
        rv.read_labml_log(tmp_path)


class Spans(HTMLParser):
    """The passage spans of each layer panel, and any reference outside the fragment."""

    def __init__(self):
        super().__init__()
        self.layer, self.in_text, self.spans, self.outside = None, 0, {}, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ('src', 'href', 'xlink:href'):
            if attrs.get(key) and not attrs[key].startswith('#'):
                self.outside.append(attrs[key])
        if 'data-layer' in attrs:
            self.layer = int(attrs['data-layer'])
        if attrs.get('class') == 'rv-text':
            self.in_text += 1
        elif tag == 'span' and self.in_text and self.layer is not None:
            self.spans.setdefault(self.layer, []).append(attrs['class'].split())

    def handle_endtag(self, tag):
        if tag == 'div' and self.in_text:
            self.in_text = 0


def test_render_shows_each_layer_each_character_and_drops(tmp_path):
    t = trained(tmp_path)
    assert t.run_dir == tmp_path / 'run' and t.step == 20
    data = rv.analyse(t, text=TEXT, length=16 * 4, capacity_factor=0.6)
    page = rv.render(data, uid='t')
    # One block for Markdown: no blank line; nothing fetched from anywhere
    assert '\n\n' not in page
    parser = Spans()
    parser.feed(page)
    assert parser.outside == []
    # A panel per layer with a span per character, coloured by its expert, struck through when dropped
    assert sorted(parser.spans) == [0, 1]
    for l, spans in parser.spans.items():
        layer = data['passage']['layers'][l]
        assert len(spans) == len(data['passage']['text']) == 64
        assert [int(c[0][1:]) for c in spans] == layer['expert']
        assert ['d' not in c for c in spans] == [bool(k) for k in layer['kept']]
    assert any(k == 0 for k in data['passage']['layers'][0]['kept'])
    # Colours are the page's: the stand-in colours of the charts are gone
    assert rv.INK not in page and '#fe00' not in page
    assert 'var(--rv-l0)' in page and 'currentColor' in page
    # The radio buttons show one panel at a time
    assert page.count('type="radio"') == 2 and '#t-1:checked~#t-layer-1{display:block}' in page
    # Utilisation from the history
    assert data['history']['eval_steps'] == [10, 20]
    assert data['history']['fraction'][0][3] == [0.4, 0.4]


def test_command_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # No checkpoint
    assert rv.main(['--checkpoint', str(tmp_path / 'nothing')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'no checkpoint' in err
    # A dense model
    save_run(tmp_path / 'dense', model='dense')
    assert rv.main(['--checkpoint', str(tmp_path / 'dense')]) == 2
    assert 'no Switch layers' in capsys.readouterr().err
    # No text where the experiment looks for it
    save_run(tmp_path / 'run')
    assert rv.main(['--checkpoint', str(tmp_path / 'run')]) == 2
    assert 'put the file there' in capsys.readouterr().err


def test_command_writes_fragment_and_numbers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'text.txt').write_text(TEXT)
    save_run(tmp_path / 'run')
    (tmp_path / 'run' / 'log.jsonl').write_text(json.dumps({'track': {'route.min.0': [[10, [0.2]], [30, [0.1]]],
                                                                       'route.max.0': [[10, [0.3]]]}}) + '\n')
    assert rv.main(['--checkpoint', str(tmp_path / 'run'), '--data', str(tmp_path / 'text.txt')]) == 0
    data = json.loads((tmp_path / 'run' / 'routing' / 'routing.json').read_text())
    assert data['history']['train_min'][0] == [[10, 0.2]]
    page = (tmp_path / 'run' / 'routing' / 'routing.html').read_text()
    assert re.search(r'<div class="rv" id="rv">', page)
