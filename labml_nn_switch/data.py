"""
---
title: Tiny Shakespeare, character by character
summary: >
  Finding (or downloading and verifying) the text, a character vocabulary, and a seeded,
  resumable order of training windows for the Switch Transformer experiment.
---

# Tiny Shakespeare, character by character

The [experiment](experiment.py) trains a character-level language model on
[Tiny Shakespeare](https://github.com/karpathy/char-rnn/tree/master/data/tinyshakespeare)
(about 1.1 MB of plain text). This module does three small jobs for it:

1. **Find the text**: a path you give (`data=PATH` or `--data PATH`); else the file in
   labml's data folder; else download it from the canonical URL into that folder with
   `torch.hub.download_url_to_file`, which writes to a temporary file, checks its
   sha256 and only then moves it into place. Offline with no file, you get one clear
   error that says where to put the file.
2. **Turn characters into numbers**: the vocabulary is the sorted set of characters
   of the text; a character's number is its place in that list.
3. **Decide the order of training windows**, from a seed, in a way that can be saved
   and restored in a checkpoint: a resumed run sees exactly the batches the
   uninterrupted run would have seen.
"""

import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.hub import download_url_to_file

# Where Tiny Shakespeare is published (Andrej Karpathy's char-rnn), and the sha256 of that file.
TINY_SHAKESPEARE_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
TINY_SHAKESPEARE_SHA256 = '86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed'
# The file name inside labml's data folder.
TINY_SHAKESPEARE_FILE = 'tiny_shakespeare.txt'


class DataError(ValueError):
    """
    A problem with the data that the user can fix (a wrong path, an empty file, no network).
    The command line prints its message as one line, without a traceback.
    """


def download(url: str, path: Path, *, sha256: str) -> Path:
    """
    ## Download a file and verify it

    * `url` is where to fetch the file from
    * `path` is where it should end up
    * `sha256` is the expected hash; a file that does not match is thrown away

    `torch.hub.download_url_to_file` writes to a temporary name beside `path`, checks
    the hash and renames the file only once it is complete and verified, so an
    interrupted or wrong download never leaves a file at `path`.
    """
    # Make the folder
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_url_to_file(url, str(path), hash_prefix=sha256, progress=False)
    except RuntimeError as e:
        # The one `RuntimeError` it raises: the hash did not match
        raise DataError(f'downloaded {url} but its sha256 is not {sha256} ({e}); not using it') from None
    except (urllib.error.URLError, OSError) as e:
        # No network, a 404, a refused connection: one clear line
        reason = getattr(e, 'reason', None) or e
        raise DataError(f'Tiny Shakespeare is not at {path} and could not be downloaded from {url} '
                        f'({reason}); download it there yourself, or pass data=PATH') from None
    #
    return path


def find_text_file(data: Optional[str], *, data_dir: Path, url: Optional[str] = None,
                   sha256: Optional[str] = None, allow_download: bool = True) -> Path:
    """
    ## Find the text file

    * `data` is a path the user gave (`data=PATH`), or `None`/empty
    * `data_dir` is labml's data folder (`data/` under the project, by default)
    * `url` and `sha256` say where to download the text from and how to check it
      (Tiny Shakespeare's by default)
    * `allow_download` is `False` to never touch the network
    """
    # Tiny Shakespeare unless told otherwise
    url, sha256 = url or TINY_SHAKESPEARE_URL, sha256 or TINY_SHAKESPEARE_SHA256
    # A path the user gave is used as it is, and must exist
    if data:
        path = Path(data).expanduser()
        if not path.exists():
            raise DataError(f'data file {str(path)!r} does not exist')
        if not path.is_file():
            raise DataError(f'data file {str(path)!r} is not a file')
        return path
    # The file in labml's data folder, if it is there already
    path = data_dir / TINY_SHAKESPEARE_FILE
    if path.is_file():
        return path
    # Not allowed to download: say where the file should go
    if not allow_download:
        raise DataError(f'Tiny Shakespeare is not at {path}; put the file there ({url}), or pass data=PATH')
    # Download and verify it
    return download(url, path, sha256=sha256)


def load_text(path: Path) -> str:
    """
    ## Read the text

    An empty file or one that is not UTF-8 text is an error that names the file.
    """
    # Read it as UTF-8
    try:
        text = Path(path).read_text(encoding='utf-8')
    except UnicodeDecodeError:
        raise DataError(f'data file {str(path)!r} is not UTF-8 text') from None
    # An empty file cannot train anything
    if not text:
        raise DataError(f'data file {str(path)!r} is empty')
    #
    return text


def split_text(text: str, *, valid_fraction: float = 0.1) -> tuple[str, str]:
    """
    ## Training and validation text

    The first 90% of the text trains, the last 10% validates (as labml's
    `TextFileDataset` splits it).
    """
    # Where the validation text starts
    split = int(len(text) * (1 - valid_fraction))
    #
    return text[:split], text[split:]


@dataclass
class CharText:
    """
    ## The text and its characters

    The two splits, and the vocabulary: `itos[i]` is the character numbered `i`, the
    characters in sorted order. (labml-helpers' `TextDataset` does the same, but wants
    a file path and a tokenizer for what is a sorted set and a dictionary.)
    """
    # The training text (the first 90%) and the validation text (the rest)
    train: str
    valid: str
    # The characters, sorted
    itos: list[str]

    @property
    def n_tokens(self) -> int:
        """The size of the vocabulary."""
        return len(self.itos)

    def encode(self, text: str) -> torch.Tensor:
        """Characters to numbers, `[len(text)]`."""
        stoi = {c: i for i, c in enumerate(self.itos)}
        return torch.tensor([stoi[c] for c in text], dtype=torch.long)


def char_dataset(text: str) -> CharText:
    """
    The splits and the vocabulary of a text. The vocabulary is of the whole text, so
    that every validation character has a number.
    """
    train, valid = split_text(text)
    return CharText(train=train, valid=valid, itos=sorted(set(text)))


class WindowSampler:
    """
    ## A seeded, resumable order of training windows

    Training draws windows of `seq_len + 1` characters from the training text: the
    first `seq_len` are the input and the last `seq_len` the targets (shifted by one).

    Each *epoch* starts the windows at a random offset in `[0, seq_len)` and visits
    them in a random order; both come from a generator seeded with `seed + epoch`, so
    the whole order is a function of `(seed, epoch, position)`. Those three integers
    are the sampler's state: saving them in a checkpoint and restoring them gives the
    same batches as an uninterrupted run. (A `torch.utils.data.DataLoader` with a
    shuffling sampler keeps its position inside an iterator that cannot be saved.)
    """

    def __init__(self, tokens: torch.Tensor, *, seq_len: int, batch_size: int, seed: int):
        """
        * `tokens` is the encoded training text, `[n_tokens]`
        * `seq_len` is the length of an input sequence
        * `batch_size` is the number of sequences in a batch
        * `seed` fixes the order of windows
        """
        # The training text
        self.tokens = tokens
        #
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        # The state: which epoch, and how many windows of it have been used
        self.epoch = 0
        self.position = 0
        # The window starts of the current epoch (computed when first needed)
        self._starts: Optional[torch.Tensor] = None
        # There must be a full batch of windows even at the largest offset
        if self.windows_per_epoch(seq_len - 1) < batch_size:
            raise DataError(f'batch_size={batch_size} windows of seq_len={seq_len} do not fit in the '
                            f'training text ({len(tokens)} characters)')

    def windows_per_epoch(self, offset: int) -> int:
        """
        How many whole windows fit after `offset` (each needs `seq_len + 1` tokens).
        """
        return max(0, (len(self.tokens) - 1 - offset) // self.seq_len)

    def _epoch_starts(self) -> torch.Tensor:
        """
        The start of every window in this epoch, in the order they will be used.
        """
        # A generator seeded by the seed and the epoch alone
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        # A random offset, so that windows don't always begin at the same characters
        offset = int(torch.randint(self.seq_len, (1,), generator=g))
        # Windows that don't overlap: `offset`, `offset + seq_len`, ...
        starts = offset + self.seq_len * torch.arange(self.windows_per_epoch(offset))
        # In a random order
        return starts[torch.randperm(len(starts), generator=g)]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """
        ### The next batch

        Returns `(data, target)`, both `[seq_len, batch_size]`, `target` shifted by one
        character.
        """
        # Start a new epoch when the current one has no full batch left
        if self._starts is None or self.position + self.batch_size > len(self._starts):
            if self._starts is not None:
                self.epoch += 1
                self.position = 0
            self._starts = self._epoch_starts()
        # The starts of this batch, `[batch_size]`
        starts = self._starts[self.position:self.position + self.batch_size]
        # Move on
        self.position += self.batch_size
        # The indices of every character of every window, `[batch_size, seq_len + 1]`
        idx = starts[:, None] + torch.arange(self.seq_len + 1)[None, :]
        # The characters, transposed to `[seq_len + 1, batch_size]`
        windows = self.tokens[idx].t()
        # Inputs and targets
        return windows[:-1].contiguous(), windows[1:].contiguous()

    def state_dict(self) -> dict:
        """
        The sampler's state: three integers (and the sizes, to catch a mismatch).
        """
        return {'seed': self.seed, 'epoch': self.epoch, 'position': self.position,
                'seq_len': self.seq_len, 'batch_size': self.batch_size}

    def load_state_dict(self, state: dict):
        """
        Continue from a saved state.
        """
        # The same sizes, or the order would not be the same
        assert (state['seq_len'], state['batch_size']) == (self.seq_len, self.batch_size), state
        #
        self.seed, self.epoch, self.position = state['seed'], state['epoch'], state['position']
        # The starts of the saved epoch are recomputed from the seed and the epoch
        self._starts = self._epoch_starts()


def fixed_windows(tokens: torch.Tensor, *, seq_len: int, batch_size: int,
                  n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """
    ## Fixed validation batches

    Validation uses the same windows every time, spread evenly over the validation
    text, so that validation losses at different steps (and of different models)
    are comparable. Returns `n_batches` pairs `(data, target)`, each
    `[seq_len, batch_size]`.
    """
    # The last position where a window of `seq_len + 1` still fits
    last = len(tokens) - seq_len - 1
    if last < 0:
        raise DataError(f'seq_len={seq_len} is larger than the validation text ({len(tokens)} characters)')
    # Evenly spaced starts, `[n_batches * batch_size]`
    starts = torch.linspace(0, last, n_batches * batch_size).round().long()
    # `[n_batches * batch_size, seq_len + 1]`
    windows = tokens[starts[:, None] + torch.arange(seq_len + 1)[None, :]]
    # Split into batches of `[seq_len, batch_size]`
    batches = []
    for chunk in windows.split(batch_size):
        batches.append((chunk[:, :-1].t().contiguous(), chunk[:, 1:].t().contiguous()))
    #
    return batches
