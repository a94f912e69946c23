"""One process per workdir: an OS advisory lock on `<workdir>/lock`, and the workdir's checks.

`WorkdirLock(workdir).acquire()` makes the workdir (one sentence when it is a file or cannot be
written) and takes an exclusive lock on `<workdir>/lock` without waiting, through the `filelock`
library (`file_lock`: `flock` on Unix, never its soft fallback); it then writes its holder
(`pid host`) into the file. The lock belongs to the open file, so the OS releases it when the
process ends in any way (SIGKILL included): a dead run never leaves a stale lock, and the file
(kept on release) only names the last holder. A second process finds the lock taken and gets
`WorkdirBusyError`, naming the holder.

Locks are re-entrant within a process (the entry point takes the lock early, `train_and_evaluate`
again): a process-wide table maps each locked directory to its one `filelock.FileLock`, whose
counter counts the holds, because a second lock on a new file descriptor of the same file would
conflict with the first.

On several processes (hosts) only process 0 locks; `acquire(process_count=..., broadcast=...)`
tells every other process process 0's decision, so all of them stop or all go on. The workdir
must be on a file system with working `flock` (local disks; NFSv4 and Lustre emulate it).
"""

import errno
import os
import socket
import threading
from typing import Any, Callable, Dict, Optional

LOCK_FILE = 'lock'
_TAKEN, _BUSY, _BAD = 1, 0, 2  # Process 0's outcome, as told to the other processes.

_held: Dict[str, Any] = {}  # realpath -> the filelock.FileLock this process holds there
_held_guard = threading.Lock()


def file_lock(path: str, *, on_acquired: Optional[Callable[[int], None]] = None):
  """A `filelock.FileLock` on `path` as every lock of fisher_jax and its study needs it.

  Shared by the threads of a process (not thread-local), the file kept on release (it names the
  last holder), and never `filelock`'s soft fallback (a soft lock outlives a killed holder):
  on a file system without `flock`, acquiring raises `OSError`. `acquire(blocking=False)`
  raises `filelock.Timeout` (an `OSError` too) when another open file holds the lock.

  Args:
    path: the lock file (made on the first acquire; its directory must exist).
    on_acquired: called with the lock's file descriptor after each first acquire (it may write
      the file, and must leave it open).
  """
  import filelock  # pylint: disable=g-import-not-at-top  (the train extra; rundir's names need none)
  return filelock.FileLock(path, thread_local=False, preserve_lock_file=True,
                           fallback_to_soft=False, on_acquired=on_acquired)


def _write_holder(fd: int):
  os.ftruncate(fd, 0)
  os.pwrite(fd, f'{os.getpid()} {socket.gethostname()}\n'.encode(), 0)


class WorkdirBusyError(Exception):
  """Another process holds the workdir's lock (see `exit_codes.WORKDIR_BUSY`)."""


def check(workdir: str):
  """The checks of `check_writable` that need no writing (a bad workdir fails before any work).

  Raises:
    ValueError: one sentence when `workdir` is a file, or a missing `workdir` cannot be made
      (an existing ancestor is a file or not writable).
  """
  if os.path.exists(workdir):
    if not os.path.isdir(workdir):
      raise ValueError(f'--workdir {workdir!r} is a file, not a directory; choose a directory '
                       '(a new one is made).')
    return
  ancestor = os.path.dirname(os.path.abspath(workdir))
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    reason = os.strerror(errno.ENOTDIR)
  elif not os.access(ancestor, os.W_OK | os.X_OK):
    reason = f'{ancestor} is not writable'
  else:
    return
  raise ValueError(f'--workdir {workdir!r} cannot be made ({reason}); choose a directory you '
                   'can write.')


def check_writable(workdir: str):
  """Makes `workdir` if it is missing.

  Raises:
    ValueError: one sentence when `workdir` (or a parent) is a file, or it cannot be made or
      written.
  """
  check(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as error:
    raise ValueError(f'--workdir {workdir!r} cannot be made ({_reason(error)}); choose a '
                     'directory you can write.') from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ValueError(f'--workdir {workdir!r} is not writable; choose a directory you can '
                     'write.')


def _reason(error: OSError) -> str:
  return error.strerror or type(error).__name__


def holder(workdir: str) -> Optional[str]:
  """'pid N on host H' of the process holding `workdir`'s lock, or None if nobody holds it.

  Reads without taking the lock for more than an instant; writes nothing.
  """
  path = os.path.join(workdir, LOCK_FILE)
  if os.path.realpath(workdir) in _held:
    return _describe(f'{os.getpid()} {socket.gethostname()}')
  if not os.path.exists(path):
    return None
  import filelock  # pylint: disable=g-import-not-at-top
  probe = file_lock(path)
  try:
    probe.acquire(blocking=False)
  except filelock.Timeout:
    with open(path, 'rb') as f:
      return _describe(f.read(256).decode(errors='replace'))
  except OSError:  # Unreadable, or no file locks here: nobody can hold it through us.
    return None
  probe.release()
  return None


def _describe(contents: str) -> str:
  parts = contents.split()
  if len(parts) >= 2:
    return f'pid {parts[0]} on host {parts[1]}'
  return 'another process'


class WorkdirLock:
  """The lock of one workdir; a context manager that releases it (if taken) on exit.

  Args:
    workdir: the run's directory.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self._acquired = False

  def acquire(self, *, process_index: int = 0, process_count: int = 1,
              broadcast: Optional[Callable[[int], int]] = None):
    """Checks the workdir (see `check_writable`) and takes its lock, without waiting.

    Args:
      process_index, process_count: this process among the run's processes; only process 0
        takes the lock.
      broadcast: with several processes, a collective that returns process 0's integer on
        every process (e.g. `multihost_utils.broadcast_one_to_all`).

    Raises:
      WorkdirBusyError: another process holds the lock (on every process of the run).
      ValueError: the workdir is a file or cannot be written.
    """
    if self._acquired:
      return
    outcome, problem = _TAKEN, None
    if process_index == 0:
      try:
        check_writable(self.workdir)
        outcome = _TAKEN if self._take() else _BUSY
      except ValueError as error:
        outcome, problem = _BAD, error
    if process_count > 1:  # Every process learns process 0's outcome: all stop or all go on.
      if broadcast is None:
        raise ValueError(f'process_count={process_count} needs a broadcast (e.g. '
                         'multihost_utils.broadcast_one_to_all); pass one.')
      outcome = int(broadcast(outcome))
    if outcome == _BAD:
      raise problem or ValueError(f'--workdir {self.workdir!r} cannot be used by process 0 '
                                  '(see its message); choose a directory every host can write.')
    if outcome == _BUSY:
      raise WorkdirBusyError(
          f'workdir {self.workdir!r} is in use by {holder(self.workdir) or "another process"} '
          '(one run per workdir); wait for it to end, or stop it, and start again to resume.')
    self._acquired = process_index == 0

  def _take(self) -> bool:
    import filelock  # pylint: disable=g-import-not-at-top
    key = os.path.realpath(self.workdir)
    with _held_guard:
      lock = _held.get(key) or file_lock(os.path.join(self.workdir, LOCK_FILE),
                                         on_acquired=_write_holder)
      try:
        lock.acquire(blocking=False)  # Counts one more hold when this process has it.
      except filelock.Timeout:
        return False
      except OSError as error:
        raise ValueError(f'--workdir {self.workdir!r} cannot be locked ({_reason(error)}); '
                         'choose a directory you can write, on a file system with file '
                         'locks.') from None
      _held[key] = lock
      return True

  def release(self):
    """Releases the lock if this object took it (the last release unlocks the file)."""
    if not self._acquired:
      return
    self._acquired = False
    key = os.path.realpath(self.workdir)
    with _held_guard:
      lock = _held[key]
      lock.release()
      if not lock.is_locked:  # Closing the only descriptor released the flock.
        del _held[key]

  def __enter__(self) -> 'WorkdirLock':
    return self

  def __exit__(self, *exc_info):
    self.release()
