"""
The labml app's launcher without a browser: the page it serves loads nothing from outside,
the npm files are the very files the CDNs serve, records are written atomically, and bad
starts (a port taken, the npm packages missing) are one line and exit 2.

(The browser test, tests/test_app_browser.py, runs the app with a real training.)
"""

import base64
import hashlib
import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from labml_nn_switch import app

REPO = Path(__file__).resolve().parents[1]
NODE_MODULES = REPO / 'app' / 'node_modules'

pytest.importorskip('labml_app', reason='the app extra is not installed')
# labml-app's own page (read as a file: importing its server module starts it)
INDEX = Path(importlib.util.find_spec('labml_app').origin).parent / 'static' / 'index.html'


def needs_node_modules():
    if not NODE_MODULES.is_dir():
        reason = f'{NODE_MODULES} is missing (npm ci --prefix app)'
        if os.environ.get('CI', '').lower() == 'true':
            pytest.fail(reason)
        pytest.skip(reason)


def test_the_page_loads_its_libraries_from_here():
    original = INDEX.read_text(encoding='utf-8')
    # The page as published loads each library from its CDN
    for url in app.CDN_FILES:
        assert f'"{url}"' in original
    page = app.local_page(original)
    # Served here, and nothing from outside
    for npm_path in app.CDN_FILES.values():
        assert f'"/vendor/{npm_path}"' in page
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_a_library_it_does_not_know_is_an_error():
    page = INDEX.read_text(encoding='utf-8').replace('</head>', '<script src="https://cdn.example/x.js"></script></head>')
    with pytest.raises(app.AppError, match=r'loads https://cdn\.example/x\.js, which app/package\.json'):
        app.local_page(page)


def test_the_npm_files_are_the_files_the_cdns_serve():
    needs_node_modules()
    for npm_path in app.CDN_FILES.values():
        assert (NODE_MODULES / npm_path).is_file(), npm_path
    # The page pins bootstrap's file by its hash: the file from npm has it
    pinned, = re.findall(r'integrity="sha384-([^"]+)"', INDEX.read_text(encoding='utf-8'))
    css = (NODE_MODULES / app.CDN_FILES['https://cdn.jsdelivr.net/npm/bootstrap@5.0.0-beta2/dist/css/'
                                       'bootstrap.min.css']).read_bytes()
    assert base64.b64encode(hashlib.sha384(css).digest()).decode() == pinned
    # Font Awesome's stylesheet finds its fonts beside it
    fa = NODE_MODULES / '@fortawesome/fontawesome-free/css/all.css'
    for font in set(re.findall(r'url\("\.\./(webfonts/[^"?#]+)', fa.read_text())):
        assert (fa.parent.parent / font).is_file(), font


def test_a_record_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    record = tmp_path / 'Run:abc.pkl'
    app.write_atomically(record, b'old')
    assert record.read_bytes() == b'old'
    app.write_atomically(record, 'new')
    assert record.read_bytes() == b'new'

    # A crash before the rename leaves the previous record and no stray file
    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, 'replace', crash)
    with pytest.raises(KeyboardInterrupt):
        app.write_atomically(record, b'half')
    assert record.read_bytes() == b'new'
    assert [p.name for p in tmp_path.iterdir()] == ['Run:abc.pkl']


def start(*args, cwd=REPO):
    return subprocess.run([sys.executable, '-m', 'labml_nn_switch.app', *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_a_port_taken_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start('--port', str(port), '--data-dir', str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f'error: cannot listen on 127.0.0.1:{port} (Address already in use): '
                                        f'is the app already running? Another port: --port N']


def test_missing_npm_packages_is_one_line(tmp_path):
    proc = start('--port', '0', '--data-dir', str(tmp_path), '--node-modules', str(tmp_path / 'none'))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f'error: {tmp_path / "none" / "bootstrap/dist/css/bootstrap.min.css"} is missing: '
                                        f'run `npm ci --prefix app` (`make app` does it)']
