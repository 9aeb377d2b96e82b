"""
---
title: The labml app on this machine
summary: >
  Start labml's web app on 127.0.0.1 with a database of files in the project and its
  front-end libraries served locally, so that runs can be watched with no MongoDB and
  no internet.
---

# The labml app on this machine

The [labml app](https://github.com/labmlai/labml/tree/master/app) (`labml-app` on PyPI)
shows runs as they train: their losses as charts, their configuration and their output.
As published (0.5.14) it cannot start on a machine of its own without two things:

* **MongoDB.** Its server opens a MongoDB connection when it is imported
  (`labml_app.db.init_mongo_db`). Its database layer, labml_db, also has drivers that
  keep every record in a file, which the app used before it moved to MongoDB. We give it
  those instead: each record is a pickle file in `app/db/<Model>/`, each index a JSON
  file, written atomically (a temporary file, then a rename), so that a process killed
  during a write leaves the previous record, not half of one.
* **The internet.** Its page loads bootstrap (5.0.0-beta2), d3 (v6) and Font Awesome
  (5.9.0) from three CDNs. The same files are on npm: `app/package.json` names them, and
  `npm ci --prefix app` puts them in `app/node_modules/` (`make app` does it). We serve
  the app's own files with those beside them as `vendor/`, and its `index.html` with the
  three addresses pointed there. Bootstrap's `integrity` hash stays in the page, so the
  browser checks that the file from npm is the very file the CDN serves.

Start it, and train with runs reported to it:

```shell
make app                                       # = python -m labml_nn_switch.app
labml_app_url=http://127.0.0.1:5005/api/v1/default/ make quick
```

or put `app_url: http://127.0.0.1:5005/api/v1/default/` in the `.labml.yaml` of the
folder you train in (see [tracking.py](tracking.py)). The run's page is
`http://127.0.0.1:5005/run/<run uuid>`; labml prints its address when the run starts.

## One user, and its runs

A local app has one user, `local`, who needs no login. labml's client sends no project
token with a run (the app reads it from the query string, which `app_url` may not
hold), so the app would file every run under its "float" project, "to be claimed". We
give the empty token to the local user's project: runs are its own, listed on
`/runs`.

## What stays outside

The pages of runs, their metrics, configurations and output, and the Runs, Computers
and Settings pages, load everything from 127.0.0.1 (the browser test checks the run's
page and the Runs page). The menu's *Documentation* item and the links to labml's
GitHub issues point outside, as links do; nothing is loaded from them unless clicked.
"""

import argparse
import logging
import os
import re
import socket
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Optional

# The address the app listens on: this machine only
HOST = '127.0.0.1'
# labml's usual port for a local app (`labml app-server` uses it too)
PORT = 5005

# The front-end libraries that labml-app 0.5.14's `index.html` loads from CDNs, and the
# same files in the npm packages of `app/package.json`
CDN_FILES = {
    'https://cdn.jsdelivr.net/npm/bootstrap@5.0.0-beta2/dist/css/bootstrap.min.css':
        'bootstrap/dist/css/bootstrap.min.css',
    'https://d3js.org/d3.v6.min.js': 'd3/dist/d3.min.js',
    # Its `all.css` loads the fonts from `../webfonts/`, beside it in the package
    'https://cdnjs.cloudflare.com/ajax/libs/font-awesome/5.9.0/css/all.css':
        '@fortawesome/fontawesome-free/css/all.css',
}


class AppError(RuntimeError):
    """
    Something the user can fix before the app starts (assets not installed, a port taken):
    the command line prints its message as one line and exits with status 2.
    """


# ## A file database, written atomically

def file_db_drivers(db_path: Path):
    """
    labml_db's file drivers for every model and index of labml-app, in `db_path`:
    `([model drivers], [index drivers])`.
    """
    # Imported here: the app's packages are the `app` extra
    from labml_app import db
    from labml_db.driver.file import FileDbDriver
    from labml_db.index_driver.file import FileIndexDbDriver
    from labml_db.serializer.json import JsonSerializer
    from labml_db.serializer.pickle import PickleSerializer

    class AtomicFileDbDriver(FileDbDriver):
        """labml_db's file driver, with each record written to a temporary file and renamed."""

        def save_dict(self, key, data):
            write_atomically(self._db_path / f'{key}.{self._serializer.file_extension}',
                             self._serializer.to_string(data))

    class AtomicFileIndexDbDriver(FileIndexDbDriver):
        """labml_db's file index, written to a temporary file and renamed."""

        def _save_cache(self):
            write_atomically(self._index_path, self._serializer.to_string(self._cache))

    # Records as pickles (the app keeps NumPy arrays in them, as its MongoDB driver does)
    models = [AtomicFileDbDriver(PickleSerializer(), m, db_path / m.__name__) for m in db.models]
    # Indexes (a key to a record's key) as JSON
    indexes = [AtomicFileIndexDbDriver(JsonSerializer(), i, db_path / f'{i.__name__}.json') for i in db.indexes]
    #
    return models, indexes


def write_atomically(path: Path, data):
    """
    Write `data` (text or bytes) to `path` through a temporary file in the same folder and
    a rename, so that `path` always holds a whole record. The temporary file's name starts
    with a dot, so that labml_db's listing of a folder (by model name) never takes it.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data if isinstance(data, bytes) else data.encode('utf-8'))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def init_file_db(db_path: Path):
    """
    What `labml_app.db.init_mongo_db` does, on files: set labml_db's drivers for every
    model and index, and create the app's two built-in projects.
    """
    from labml_app import settings
    from labml_app.db import project, user
    from labml_db import Index, Model
    # The drivers
    models, indexes = file_db_drivers(db_path)
    Model.set_db_drivers(models)
    Index.set_db_drivers(indexes)
    # Its built-in projects (runs with an unknown token go to the "float" one)
    project.create_project(settings.FLOAT_PROJECT_TOKEN, 'float project')
    project.create_project(settings.SAMPLES_PROJECT_TOKEN, 'samples project')
    # The one user of a local app owns the runs that come without a token (labml's client
    # sends none): they are then its own, listed on its Runs page, not "to be claimed"
    local = user.get_or_create_user(identifier='local', is_local_user=True)
    project.ProjectIndex.set('', local.projects[0])
    user.TokenOwnerIndex.set('', local.key)


# ## The page, with its libraries served here

def local_page(html: str) -> str:
    """
    labml-app's `index.html` with each CDN address replaced by `/vendor/<npm path>`. A page
    that loads anything else from outside is an `AppError`: a newer labml-app that needs
    a library `app/package.json` does not have.
    """
    # Point each library here
    for url, npm_path in CDN_FILES.items():
        html = html.replace(f'"{url}"', f'"/vendor/{npm_path}"')
    # Nothing else may come from outside
    outside = re.findall(r'(?:src|href)="(https?://[^"]+)"', html)
    if outside:
        raise AppError(f'labml-app\'s index.html loads {outside[0]}, which app/package.json does not provide')
    #
    return html


def check_node_modules(node_modules: Path):
    """
    An `AppError` naming the first library of `CDN_FILES` missing from `node_modules`.
    """
    missing = [p for p in CDN_FILES.values() if not (node_modules / p).is_file()]
    if missing:
        raise AppError(f'{node_modules / missing[0]} is missing: run `npm ci --prefix app` '
                       f'(`make app` does it)')


def build_static(static_dir: Path, node_modules: Path) -> Path:
    """
    The folder the app serves its files from, in `static_dir`: links to labml-app's own
    files, `vendor/` linked to `node_modules`, and `index.html` from `local_page`.
    """
    from labml_app import flask_app
    # A fresh folder each time: the app's files may change with its version
    static_dir.mkdir(parents=True, exist_ok=True)
    for entry in static_dir.iterdir():
        entry.unlink()
    # The app's own files (images, its bundle and style), linked
    for entry in Path(flask_app.STATIC_PATH).iterdir():
        if entry.name != 'index.html':
            (static_dir / entry.name).symlink_to(entry)
    # The libraries
    (static_dir / 'vendor').symlink_to(node_modules.resolve())
    # The page
    page = (Path(flask_app.STATIC_PATH) / 'index.html').read_text(encoding='utf-8')
    (static_dir / 'index.html').write_text(local_page(page), encoding='utf-8')
    #
    return static_dir


# ## Start it

def create_app(*, host: str, port: int, data_dir: Path, node_modules: Path):
    """
    labml-app's FastAPI application, on a file database in `data_dir / 'db'`, serving its
    files from `data_dir / 'static'`.
    """
    # labml-app reads its address from these when its settings module is imported
    os.environ['LABML_APP_SERVER_IP'] = host
    os.environ['LABML_APP_SERVER_PORT'] = str(port)
    # Importing `flask_app` creates the application, and calls `db.init_mongo_db()`: the
    # file database takes its place
    from labml_app import db
    db.init_mongo_db = lambda: init_file_db(data_dir / 'db')
    # It logs every request; keep warnings and errors
    from labml_app.logger import logger
    logger.setLevel(logging.WARNING)
    # Its summaries take NumPy means of series that have no points yet; the result is unused
    warnings.filterwarnings('ignore', message='Mean of empty slice', category=RuntimeWarning)
    warnings.filterwarnings('ignore', message='invalid value encountered in scalar divide', category=RuntimeWarning)
    from labml_app import flask_app
    # Its catch-all route serves files from `STATIC_PATH`, read at each request
    flask_app.STATIC_PATH = build_static(data_dir / 'static', node_modules)
    #
    return flask_app.app


def check_port(host: str, port: int):
    """
    An `AppError` if `host:port` cannot be listened on, e.g. because an app already runs there.
    """
    with socket.socket() as s:
        # As uvicorn binds: a port left in TIME_WAIT by a stopped app is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise AppError(f'cannot listen on {host}:{port} ({e.strerror}): is the app already running? '
                           f'Another port: --port N') from None


def serve(*, host: str = HOST, port: int = PORT, data_dir: Optional[Path] = None,
          node_modules: Optional[Path] = None):
    """
    ## Serve the app until Ctrl-C

    * `data_dir` holds the database and the served files; `app/` in the project (the
      folder of the nearest `.labml.yaml`, as labml finds it) by default
    * `node_modules` holds the npm packages; `app/node_modules` there by default
    """
    import uvicorn
    from labml_nn_switch.tracking import labml_settings
    # The port must be free (uvicorn would only log the error after the app has started)
    check_port(host, port)
    # The project's `app/` folder
    app_dir = Path(labml_settings()['path']) / 'app'
    data_dir = Path(data_dir or app_dir)
    node_modules = Path(node_modules or app_dir / 'node_modules')
    check_node_modules(node_modules)
    application = create_app(host=host, port=port, data_dir=data_dir, node_modules=node_modules)
    # Say where it is and how to report to it
    print(f'labml app: http://{host}:{port}/  (runs stored in {data_dir / "db"})\n'
          f'train with: labml_app_url=http://{host}:{port}/api/v1/default/ '
          f'python -m labml_nn_switch.experiment train preset=quick', flush=True)
    # One process: the file database is not shared between processes
    uvicorn.run(application, host=host, port=port, log_level='warning')


def main(argv: Optional[list[str]] = None) -> int:
    """
    `python -m labml_nn_switch.app [--host H] [--port P] [--data-dir DIR] [--node-modules DIR]`
    """
    parser = argparse.ArgumentParser(prog='python -m labml_nn_switch.app',
                                     description='the labml app on this machine, with a file database')
    parser.add_argument('--host', default=HOST, help=f'address to listen on (default {HOST})')
    parser.add_argument('--port', type=int, default=PORT, help=f'port to listen on (default {PORT})')
    parser.add_argument('--data-dir', type=Path, help='folder of the database and served files (default app/)')
    parser.add_argument('--node-modules', type=Path,
                        help='npm packages of app/package.json (default app/node_modules)')
    args = parser.parse_args(argv)
    try:
        serve(host=args.host, port=args.port, data_dir=args.data_dir, node_modules=args.node_modules)
    except AppError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


#
if __name__ == '__main__':
    sys.exit(main())
