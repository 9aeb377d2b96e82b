"""
---
title: Where labml reads its settings, and where the run goes
summary: >
  labml's settings taken from the .labml.yaml of the working directory, as labml reads
  them, and the writers of a run: the screen, labml's files, and the labml app when one
  is configured and answers.
---

# Where labml reads its settings, and where the run goes

labml keeps its settings in `.labml.yaml` files: the folders for runs and data
(`experiments_path`, `data_path`, relative to the file's folder) and the address of a
[labml app](app.py) to report runs to (`app_url`). It reads them from the folder of the
Python file that creates the experiment and every folder above it, or, in a notebook,
from the working directory.

`python -m labml_nn_switch.experiment` runs a file inside the package, so labml alone
would read the package's `.labml.yaml`, wherever you stand. A user expects the settings
of the folder they run in, as with a script of their own. So this module has labml's own
loader read the files at and above the **working directory** (`labml_settings`), and
gives labml all of them at once (`use_labml_settings`): the runs folder, the data folder
and the app's address then all come from the same file.

Without any `.labml.yaml`, labml says so and uses the working directory itself, with
its defaults `logs/` and `data/`.

## The app: when it is configured, and when it answers

The address is `app_url` from `.labml.yaml`, else the environment variable
`labml_app_url` (labml's own rule, in `get_app_url_for_handle`). With it, labml's `app`
writer posts the run to `{app_url}track?run_uuid=...` as it trains.

If the app does not answer, labml's writer retries forever, and at the end of the run
waits for the app before the process may exit. So before the run starts, `writers`
asks the app once: if it does not answer within a few seconds, the run goes on with the
screen and its files, and says so in one line.
"""

import contextlib
import io
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from labml import lab

# The settings that say where a run goes; `use_labml_settings` gives labml all of them,
# so none is left to the package's own `.labml.yaml`.
WHERE_SETTINGS = ('path', 'experiments_path', 'data_path', 'check_repo_dirty',
                  'app_url', 'app_track_frequency', 'app_open_browser')

# Seconds to wait for the app's answer before training without it
APP_TIMEOUT = 5.0


def labml_settings(cwd: Optional[Path] = None) -> dict[str, Any]:
    """
    ## labml's settings for the working directory

    * `cwd` is the folder to read from; the working directory if not given

    labml's own loader (`labml.internal.lab.Lab`) reads every `.labml.yaml` at and above
    `cwd` and fills in its defaults; `path` is the folder of the nearest file (the
    project), or `cwd` if there is none.
    """
    # Imported here: the loader is labml's internal class, used for nothing else
    from labml.internal.lab import Lab
    cwd = Path(cwd or Path.cwd()).resolve()
    # Without any `.labml.yaml`, labml prints a warning box and uses `cwd`: that is our
    # documented default, so the box is kept off the screen (stdout, where labml prints it)
    has_file = any((p / '.labml.yaml').is_file() for p in (cwd, *cwd.parents))
    try:
        with contextlib.nullcontext() if has_file else contextlib.redirect_stdout(io.StringIO()):
            return Lab(cwd).configs
    except RuntimeError as e:
        # An unknown key in a `.labml.yaml`, or an app address that is not a URL
        raise ValueError(f'labml settings of {cwd}: {e}') from None


def use_labml_settings(cwd: Optional[Path] = None) -> dict[str, Any]:
    """
    ## Tell labml

    Gives labml the settings of the working directory (`labml_settings`); they stay in
    force when `experiment.create` later reads the package's own `.labml.yaml`
    (labml applies settings given in Python after its files). Returns them.
    """
    # The settings, as labml reads them here
    settings = labml_settings(cwd)
    # All at once: the folders and the app's address come from the same file
    lab.configure({k: settings[k] for k in WHERE_SETTINGS})
    #
    return settings


def app_url() -> Optional[str]:
    """
    ## The app's address

    The base address labml reports runs to (ending in `/`): `app_url` of the settings in
    force, else `labml_app_url` of the environment; `None` if neither is set. (labml
    checks that it is a URL when it reads the settings: `labml_settings` reports it.)
    """
    # Imported here: labml's rule for the address, in its internal module
    from labml.internal.lab import get_app_url_for_handle
    # The setting in force (`.labml.yaml` or Python); labml falls back to the environment
    return get_app_url_for_handle('', base_url=lab.get_info()['configs'].get('app_url'))


def app_answers(url: str, *, timeout: float = APP_TIMEOUT) -> Optional[str]:
    """
    ## Does the app answer?

    `None` if a server answers at `url` (with any HTTP status: it is there), else the
    reason it does not, e.g. `'Connection refused'`.
    """
    try:
        # A GET of the base address; labml_app answers it with its page
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        # An HTTP error is an answer
        return None
    except urllib.error.URLError as e:
        return str(getattr(e.reason, 'strerror', None) or e.reason)
    except (OSError, ValueError) as e:
        # A timeout, a reset connection, a malformed answer
        return str(e) or type(e).__name__


def writers() -> set[str]:
    """
    ## The writers of a run

    The screen and labml's local files, and the app when an address is configured and the
    app answers there. If it does not, one warning line, and the run goes on without it.
    """
    # Always: the screen, and `logs/<name>/<run>/`
    chosen = {'screen', 'file'}
    # The app, if one is configured ...
    url = app_url()
    if url is None:
        return chosen
    # ... and answers
    reason = app_answers(url)
    if reason is None:
        chosen.add('app')
    else:
        print(f'warning: the labml app at {url} does not answer ({reason}); training goes on without it',
              file=sys.stderr, flush=True)
    #
    return chosen
