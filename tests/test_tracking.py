"""
Where a run goes: labml's settings read from the `.labml.yaml` of the working directory
(folders and app address alike), and the labml app used only when it answers; when it
does not, one warning line and the run trains on.

labml's settings are process-wide, so the tests that change them run in a subprocess.
"""

import http.server
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from labml_nn_switch import tracking
from shared_text import SHAKESPEARE, needs_text

REPO = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def in_subprocess(code: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != 'labml_app_url'} | (env or {})
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


# What labml has in force after `use_labml_settings()` and `experiment.create` of the
# package's experiment file (which has a `.labml.yaml` of its own beside the package)
SHOW = '''
    import json
    from labml import experiment, lab
    from labml.internal.lab import lab_singleton
    from labml_nn_switch import experiment as ex, tracking
    tracking.use_labml_settings()
    experiment.create(name='t', python_file=ex.__file__, writers=set())
    app = lab_singleton().app_configs
    print(json.dumps({'experiments': str(lab.get_experiments_path()), 'data': str(lab.get_data_path()),
                      'app': app and app.url, 'open_browser': app and app.open_browser}))
'''


def test_settings_come_from_the_working_directory(tmp_path):
    (tmp_path / '.labml.yaml').write_text('experiments_path: runs_here\ndata_path: texts\n'
                                          'app_url: http://127.0.0.1:5999/api/v1/default/\n'
                                          'app_open_browser: false\n')
    # From a folder below the project, as labml looks upwards
    work = tmp_path / 'sub'
    work.mkdir()
    proc = in_subprocess(SHOW, work)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout.strip().splitlines()[-1])
    assert shown['experiments'] == str((tmp_path / 'runs_here').resolve())
    assert shown['data'] == str((tmp_path / 'texts').resolve())
    assert shown['app'].startswith('http://127.0.0.1:5999/api/v1/default/track?')
    assert shown['open_browser'] is False


def test_without_a_settings_file_the_working_directory_and_the_environment(tmp_path):
    # No `.labml.yaml` here or above (the repository's own is not read): labml's defaults
    proc = in_subprocess(SHOW, tmp_path, env={'labml_app_url': 'http://127.0.0.1:5998/api/v1/default/'})
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout.strip().splitlines()[-1])
    assert shown['experiments'] == str((tmp_path / 'logs').resolve())
    assert shown['app'].startswith('http://127.0.0.1:5998/api/v1/default/track?')


def test_an_app_url_that_is_not_a_url_names_itself(tmp_path):
    (tmp_path / '.labml.yaml').write_text('app_url: 127.0.0.1:5005\n')
    with pytest.raises(ValueError, match=r'app_url should be a valid URL: 127\.0\.0\.1:5005'):
        tracking.labml_settings(tmp_path)


def test_the_app_is_a_writer_only_when_it_answers(tmp_path, monkeypatch, capsys):
    # Settings with no `app_url` (a folder without `.labml.yaml`): the environment gives it
    monkeypatch.chdir(tmp_path)
    tracking.use_labml_settings()
    capsys.readouterr()
    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # Something answers (even "not found"): the app is a writer, silently
        monkeypatch.setenv('labml_app_url', f'http://127.0.0.1:{server.server_port}/api/v1/default/')
        assert tracking.writers() == {'screen', 'file', 'app'}
        assert capsys.readouterr().err == ''
    finally:
        server.shutdown()
        server.server_close()
    # Nothing listens: no app, and one line that says so
    url = f'http://127.0.0.1:{closed_port()}/api/v1/default/'
    monkeypatch.setenv('labml_app_url', url)
    assert tracking.writers() == {'screen', 'file'}
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'warning: the labml app at {url} does not answer')
    assert 'training goes on without it' in err
    # No address: no app, no word
    monkeypatch.delenv('labml_app_url')
    assert tracking.writers() == {'screen', 'file'}
    assert capsys.readouterr().err == ''


@pytest.mark.slow
@needs_text
def test_training_goes_on_when_the_app_does_not_answer(tmp_path):
    url = f'http://127.0.0.1:{closed_port()}/api/v1/default/'
    (tmp_path / '.labml.yaml').write_text(f'app_url: {url}\n')
    proc = subprocess.run([sys.executable, '-m', 'labml_nn_switch.experiment', 'train', 'preset=quick',
                           'steps=10', 'eval_batches=1', f'data={SHAKESPEARE}'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # One warning line, and nothing else about the app
    output = proc.stdout + proc.stderr
    warnings = [line for line in output.splitlines() if 'labml app' in line or 'LabML App' in line]
    assert warnings == [f'warning: the labml app at {url} does not answer (Connection refused); '
                        f'training goes on without it']
    # The run trained to the end and kept its checkpoint, in this folder's logs/
    assert list((tmp_path / 'logs' / 'switch_shakespeare').glob('*/checkpoints/step_*.pt'))
