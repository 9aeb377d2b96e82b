r"""
---
title: Watchdog - which rank stopped, and in which collective
summary: >
  A heartbeat per rank in torch.distributed's key-value store, and a context that turns
  a collective's timeout into one message naming the collective and the ranks that
  stopped answering.
---

# Watchdog

When a rank dies, the sockets of its peers close and every other rank's
next collective fails at once. When a rank *freezes* (stopped with SIGSTOP,
swapped out, stuck in a driver), nothing closes: the others wait in their
collective until the process group's timeout (a setting, see
[process_group.py](process_group.py)) and then fail with the backend's
message, which names a socket or a sequence number, not the rank that
stopped nor what the job was doing.

Two small pieces make that message clear:

* **A heartbeat.** Every rank runs a thread that increments its own counter
  in the process group's key-value store (the `TCPStore` torchrun's
  rendezvous set up) every `BEAT` seconds. A frozen process freezes its
  threads too; a rank merely waiting in a collective keeps beating, since
  waiting releases Python's lock.
* **`watch(what)`**, a context around the code that communicates. When a
  collective fails inside it, it reads every rank's counter twice, a few beats
  apart, and raises `RankStopped`: *what* was running, on which rank, and
  which ranks' counters did not move.

Costs: one small store write per rank and beat (every half second), and
nothing on the training step's path. The store is held by torchrun's agent:
if the rank that holds it (rank 0 under a plain `init_process_group`) is the
one frozen, the heartbeats cannot be read and the message says so.
"""

import threading
import time
from contextlib import contextmanager
from datetime import timedelta

import torch.distributed as dist

# Seconds between two beats
BEAT = 0.5
# The keys of the counters, one per rank
_KEY = "labml_nn_switch/heartbeat/{}"


class RankStopped(RuntimeError):
    """A collective failed because another rank stopped answering (or died)."""


class _Heartbeat(threading.Thread):
    """Increments this rank's counter in the store every `BEAT` seconds until stopped."""

    def __init__(self, store, rank: int):
        super().__init__(name="labml_nn_switch heartbeat", daemon=True)
        self.store, self.key, self.stopped = store, _KEY.format(rank), threading.Event()

    def run(self):
        while not self.stopped.is_set():
            try:
                self.store.add(self.key, 1)
            except Exception:  # the store went away: the job is ending
                return
            self.stopped.wait(BEAT)


_heartbeat: _Heartbeat | None = None


def _store():
    """The default process group's key-value store."""
    return dist.distributed_c10d._get_default_store()


def start_heartbeat() -> None:
    """Start this rank's heartbeat (once; `init_from_env` calls it)."""
    global _heartbeat
    if _heartbeat is None or not _heartbeat.is_alive():
        _heartbeat = _Heartbeat(_store(), dist.get_rank())
        _heartbeat.start()


def stop_heartbeat() -> None:
    """Stop it (before the process group is destroyed)."""
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stopped.set()
        _heartbeat.join(timeout=2 * BEAT)
        _heartbeat = None


def stopped_ranks(*, beats: int = 4) -> list[int] | None:
    """
    The ranks whose heartbeat did not move over `beats` beats, or `None` when
    the store cannot be read. Takes `beats * BEAT` seconds.
    """
    try:
        store, world_size = _store(), dist.get_world_size()
        # Do not wait long for a store that is itself frozen
        store.set_timeout(timedelta(seconds=beats * BEAT + 5))
        keys = [_KEY.format(r) for r in range(world_size)]
        # `add(key, 0)` reads a counter without waiting for it to exist (0 if it never beat)
        before = [store.add(k, 0) for k in keys]
        time.sleep(beats * BEAT)
        after = [store.add(k, 0) for k in keys]
    except Exception:
        return None
    return [r for r in range(world_size) if after[r] == before[r]]


def _is_communication_error(error: BaseException) -> bool:
    """Whether `error` came from a collective (a timeout, a closed connection), not from our own code."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        s in text for s in ("gloo", "Gloo", "NCCL", "Timed out", "timed out", "Connection closed", "Connection reset"))


@contextmanager
def watch(what: str):
    """
    ## Name the collective that failed

    * `what`: what runs inside, for the message (e.g. `"the backward pass: expert
      all-to-alls and the gradient all-reduce"`)

    A communication error inside becomes `RankStopped`, naming `what`, this
    rank, and the ranks that stopped answering; other errors pass unchanged.
    Outside a process group it does nothing.
    """
    try:
        yield
    except RankStopped:
        raise
    except Exception as error:
        if not (dist.is_available() and dist.is_initialized() and _is_communication_error(error)):
            raise
        rank = dist.get_rank()
        stopped = stopped_ranks()
        if stopped is None:
            who = "the heartbeats could not be read (the rank holding the store may be the one that stopped)"
        elif [r for r in stopped if r != rank]:
            who = ("rank(s) " + ", ".join(str(r) for r in stopped if r != rank)
                   + " stopped answering (no heartbeat); the others are alive")
        else:
            who = ("every rank is alive: one of them took longer than the timeout to get there, or left "
                   "the collective (it failed or exited)")
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RankStopped(f"rank {rank}: {what} failed: {who} [{first_line}]") from error
