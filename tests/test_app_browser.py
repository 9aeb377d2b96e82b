"""
The labml app on this machine, in headless Chromium: start it as `make app` does (on a
free port, with its database in a temporary folder), train a few steps with the run
reported to it through `app_url` in the working directory's `.labml.yaml`, and open the
run's page: the loss chart spans the run's steps and shows its last training loss, the page's
libraries (bootstrap, d3, Font Awesome) load, and no request leaves 127.0.0.1.

Screenshots go to test-artifacts/. Without Chromium, or without the npm packages of
app/package.json (`npm ci --prefix app`), these tests skip, except in CI (CI=true),
where they fail.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from shared_text import SHAKESPEARE, needs_text
from site_fixtures import ARTIFACTS, chromium
from test_app import needs_node_modules

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs_text]

REPO = Path(__file__).resolve().parents[1]
# Training steps: the quick preset logs every 10 and evaluates at the end
STEPS = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def app_url(tmp_path_factory):
    """The app, started as `make app` starts it; its base URL."""
    needs_node_modules()
    data = tmp_path_factory.mktemp('app')
    port = free_port()
    log = open(data / 'app.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'labml_nn_switch.app', '--port', str(port), '--data-dir', str(data)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}'
    try:
        # Wait until it answers
        for _ in range(600):
            assert proc.poll() is None, (data / 'app.log').read_text()
            try:
                urllib.request.urlopen(url + '/', timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail('the app did not answer in 60 s: ' + (data / 'app.log').read_text())
        yield url
    finally:
        # Ctrl-C, as a user stops it
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope='module')
def run(app_url, tmp_path_factory):
    """A short training in a folder whose `.labml.yaml` names the app; the run's uuid and metrics."""
    work = tmp_path_factory.mktemp('work')
    (work / '.labml.yaml').write_text(f'app_url: {app_url}/api/v1/default/\napp_open_browser: false\n')
    env = {k: v for k, v in os.environ.items() if k != 'labml_app_url'}
    proc = subprocess.run([sys.executable, '-m', 'labml_nn_switch.experiment', 'train', 'preset=quick',
                           f'steps={STEPS}', 'eval_batches=2', f'data={SHAKESPEARE}'],
                          cwd=work, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # labml printed the run's page in the app
    run_dir, = (work / 'logs' / 'switch_shakespeare').iterdir()
    assert f'{app_url}/run/{run_dir.name}' in proc.stdout
    # The mean loss of each logging interval, as labml's file writer recorded it
    losses = {}
    for line in (run_dir / 'log.jsonl').read_text().splitlines():
        for key, series in json.loads(line)['track'].items():
            for step, values in series:
                losses.setdefault(key, {})[step] = sum(values) / len(values)
    return {'uuid': run_dir.name, 'losses': losses}


@pytest.fixture(scope='module')
def browser():
    with chromium() as b:
        yield b


class Page:
    """A page of the app; every request outside 127.0.0.1 is recorded and refused."""

    def __init__(self, browser, app_url):
        self.context = browser.new_context(viewport={'width': 1200, 'height': 900})
        self.outside: list[str] = []
        self.errors: list[str] = []
        host = urlsplit(app_url).netloc

        def route(r):
            url = r.request.url
            if urlsplit(url).netloc == host or url.startswith(('data:', 'blob:')):
                r.continue_()
            else:
                self.outside.append(url)
                r.abort()

        self.context.route('**/*', route)
        self.page = self.context.new_page()
        self.page.on('console', lambda m: m.type == 'error' and self.errors.append(m.text))
        self.page.on('pageerror', lambda e: self.errors.append(str(e)))
        self.page.on('requestfailed', lambda r: self.errors.append(f'request failed: {r.url}'))
        self.page.on('response', lambda r: r.status >= 400 and self.errors.append(f'{r.status}: {r.url}'))

    def screenshot(self, name: str):
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f'{name}.png'), full_page=True)

    def assert_clean(self):
        assert self.outside == [], f'requests outside 127.0.0.1: {self.outside}'
        assert self.errors == [], f'errors: {self.errors}'


@pytest.fixture
def page(browser, app_url):
    p = Page(browser, app_url)
    yield p
    p.context.close()


# The libraries of the page: d3 defined, bootstrap's stylesheet applied (its integrity
# hash checked by the browser), Font Awesome's solid font loaded
LIBRARIES = """async () => {
  await document.fonts.ready;
  const sheet = [...document.styleSheets].find(s => (s.href || '').endsWith('/bootstrap.min.css'));
  return {d3: typeof d3 === 'object' && typeof d3.select === 'function',
          bootstrap: sheet ? sheet.cssRules.length : 0,
          fontawesome: document.fonts.check('900 16px "Font Awesome 5 Free"')};
}"""

# Each metric's row under the chart: its name and its values (last, smoothed)
ROWS = """() => [...document.querySelectorAll('svg.sparkline')].map(s => ({
  name: s.parentElement.innerText.trim().split('\\n')[0],
  values: [...s.querySelectorAll('text')].map(t => t.textContent)}))"""


def test_the_run_page_shows_the_loss_chart_from_127_0_0_1(page, app_url, run):
    page.page.goto(f'{app_url}/run/{run["uuid"]}', wait_until='networkidle')
    ticks = page.page.locator('svg#chart g.bottom-axis g.tick text')
    ticks.first.wait_for(timeout=30_000)
    page.page.wait_for_timeout(500)
    page.screenshot('app-run')
    # The step axis spans the run: from the first logged step to the last
    steps = [float(t) for t in ticks.all_text_contents()]
    logged = sorted(run['losses']['loss.train'])
    assert logged[-1] == STEPS
    assert min(steps) == logged[0] and max(steps) == STEPS, steps
    # The training loss (the app's default series), its last value as labml recorded it
    rows = {r['name']: r['values'] for r in page.page.evaluate(ROWS)}
    assert f'{run["losses"]["loss.train"][STEPS]:.3f}' in rows['loss.train'], rows
    # The run's name and status
    body = page.page.inner_text('body')
    assert 'switch_shakespeare' in body and 'COMPLETED' in body
    # The libraries came from here, and work
    libraries = page.page.evaluate(LIBRARIES)
    assert libraries['d3'] and libraries['bootstrap'] > 100 and libraries['fontawesome'], libraries
    page.assert_clean()


def test_the_runs_page_lists_the_run(page, app_url, run):
    page.page.goto(f'{app_url}/runs', wait_until='networkidle')
    page.page.get_by_text('switch_shakespeare').first.wait_for(timeout=30_000)
    page.screenshot('app-runs')
    # The run is the local user's own: listed, not waiting to be claimed
    assert 'You will see your runs here' not in page.page.inner_text('body')
    page.page.get_by_text('switch_shakespeare').first.click()
    page.page.wait_for_url(f'{app_url}/run/{run["uuid"]}', timeout=15_000)
    page.assert_clean()
