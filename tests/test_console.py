"""What a run shows: one aligned line per epoch, a progress bar
on a terminal, the summary, no library chatter unless --verbose; speed under perf/ in
TensorBoard only and the learning rate in metrics.jsonl."""

import fcntl
import io
import os
import re
import struct
import subprocess
import sys
import termios
import time

import pytest

from conftest import REPO
from fisher_jax.training import console
from fisher_jax.training import writers

# Lines TensorFlow, TFDS, XLA/JAX, orbax and clu print at INFO (unless silenced).
CHATTER = re.compile(r'absl::InitializeLog|oneDNN|Unable to initialize backend|tf\.data\.Dataset|'
                     r'dataset_info|xla_bridge|checkpoint_manager|\[Hyperparameters\]|'
                     r'steps_per_sec|work unit notes|^[IWE]\d{4} ', re.MULTILINE)
EPOCH_LINE = re.compile(r'^epoch +(\d+)/(\d+)\b')


def _main(workdir, *args):
  env = dict(os.environ)
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # conftest's; the run must silence TensorFlow itself.
  cmd = [sys.executable, '-m', 'fisher_jax.main', '--config', 'configs/default.py',
         '--workdir', str(workdir), *args]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _event_tags(workdir):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tags = set()
  for name in os.listdir(workdir):
    if name.startswith('events.out.tfevents'):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, name)):
        tags.update(value.tag for value in event.summary.value)
  return tags


@pytest.mark.slow
def test_default_run_prints_one_line_per_epoch_and_a_summary_and_no_chatter(tmp_path):
  result = _main(tmp_path, '--config.num_epochs=2')
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout.splitlines()
  assert not CHATTER.search(result.stdout + result.stderr), result.stdout + result.stderr
  assert out[0].startswith(f'fisher_jax: starting in {tmp_path}')
  assert out[1].startswith('digits: ') and '2 epochs of 10 steps of 128' in out[1], out[1]
  assert out[2].startswith('Compiling')
  epochs = [line for line in out if EPOCH_LINE.match(line)]
  assert [EPOCH_LINE.match(line).groups() for line in epochs] == [('0', '2'), ('1', '2'),
                                                                   ('2', '2')]
  for line in epochs[1:]:
    assert re.search(r'loss +\d\.\d{4} +acc +\d\.\d{3} +val +\d\.\d{3} +Tr\(F\) +[\d.e+]+ +'
                     r'[\d.]+ steps/s +ETA \d+:\d\d:\d\d$', line), line
    assert len(line) <= 100, line
  assert len({line.index('Tr(F)') for line in epochs}) == 1  # Aligned.
  assert len({line.index('steps/s') for line in epochs[1:]}) == 1
  assert 'penalty' not in result.stdout  # regularizer.name='none'.

  records = writers.read_metrics(str(tmp_path))
  best = max((r for r in records if 'val/accuracy' in r), key=lambda r: r['val/accuracy'])
  assert out[-2].startswith(
      f'best val accuracy {best["val/accuracy"]:.4f} at epoch {best["step"] // 10} '
      f'(test accuracy {best["test/accuracy"]:.4f} there); epoch 2/2, ran '), out[-2]
  assert out[-1].startswith(f'workdir {tmp_path}: ')
  assert len(out) == 3 + len(epochs) + 2, out  # Nothing else: no hyperparameters, no metrics.

  # Acceptance 2: speed is TensorBoard's (perf/), the learning rate a metric.
  assert records and not any(k in r for r in records for k in ('steps_per_sec', 'uptime'))
  trained = [r for r in records if 'train/loss' in r]
  assert [r['train/learning_rate'] for r in trained] == [0.03, 0.03]
  tags = _event_tags(tmp_path)
  assert {'perf/steps_per_sec', 'perf/uptime', 'train/learning_rate', 'train/loss',
          'curvature/fisher_trace'} <= tags, tags
  assert not {'steps_per_sec', 'uptime'} & tags
  assert '_hparams_/session_start_info' in tags  # Hyperparameters: TensorBoard's hparams.


@pytest.mark.slow
def test_verbose_shows_tensorflow_tfds_and_xla_logs(tmp_path):
  result = _main(tmp_path, '--verbose', '--config.num_epochs=1', '--config.model.name=mlp',
                 '--config.dataset.train_subset=256')
  assert result.returncode == 0, result.stderr[-3000:]
  for chatter in ('oneDNN custom operations',  # TensorFlow's C++ at import
                  'Constructing tf.data.Dataset',  # TFDS
                  'Unable to initialize backend'):  # XLA / JAX
    assert chatter in result.stderr, chatter
  assert EPOCH_LINE.search(result.stdout) is None or 'epoch 1/1' in result.stdout


def _console(stream, **kwargs):
  return console.Console(num_epochs=12, steps_per_epoch=10, stream=stream, **kwargs)


def test_epoch_lines_are_aligned_with_blanks_for_what_was_not_measured():
  stream = io.StringIO()
  screen = _console(stream)
  screen.write_scalars(0, {'curvature/fisher_trace': 80.139})
  for step in range(1, 21):
    screen.advance(step)
    if step == 10:
      screen.write_scalars(10, {'train/loss': 2.14914, 'train/accuracy': 0.3164,
                                'val/accuracy': 0.6597, 'curvature/fisher_trace': 196.75})
  screen.write_scalars(15, {'train/loss': 1.0})  # Within an epoch: not shown.
  screen.write_scalars(20, {'train/loss': 1.44741, 'train/accuracy': 0.64844,
                            'regularizer/penalty': 0.01234})  # Not evaluated, not measured.
  lines = stream.getvalue().splitlines()
  assert lines[0].rstrip() == 'epoch  0/12' + ' ' * 37 + 'Tr(F)     80.14'
  assert lines[1].startswith('epoch  1/12  loss 2.1491  acc 0.316  val 0.660  Tr(F)     196.8')
  assert re.search(r'steps/s  ETA \d:\d\d:\d\d$', lines[1])
  assert lines[2].startswith('epoch  2/12  loss 1.4474  acc 0.648' + ' ' * 30 +
                             'penalty   0.01234'), lines[2]
  assert len(lines) == 3
  steps_per_s = [float(line.split(' steps/s')[0].split()[-1]) for line in lines[1:]]
  assert all(s > 0 for s in steps_per_s)


def test_summary_names_the_best_val_epoch_and_its_test_accuracy():
  records = [{'step': 0, 'curvature/fisher_trace': 1.0},
             {'step': 10, 'val/accuracy': 0.5, 'test/accuracy': 0.4},
             {'step': 20, 'val/accuracy': 0.9, 'test/accuracy': 0.7},
             {'step': 30, 'val/accuracy': 0.9, 'test/accuracy': 0.8},
             {'step': 40, 'val/accuracy': 0.8, 'test/accuracy': 0.85}]
  assert console.summary(records, 10, 12, 65.4) == (
      'best val accuracy 0.9000 at epoch 2 (test accuracy 0.7000 there); epoch 4/12, ran 0:01:05')
  no_val = [{'step': 10, 'test/accuracy': 0.4}, {'step': 20, 'test/accuracy': 0.6}]
  assert console.summary(no_val, 10, 2, 3) == (
      'no val split: test accuracy 0.6000 at the end; epoch 2/2, ran 0:00:03')


def test_a_terminal_gets_a_progress_bar_and_other_processes_print_nothing():
  master, slave = os.openpty()
  fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 100, 0, 0))  # 100 columns.
  with open(slave, 'w') as tty:
    screen = _console(tty)
    for step in range(1, 6):
      time.sleep(0.12)  # tqdm redraws at most every 0.1 s.
      screen.advance(step)
    screen.close()
    drawn = os.read(master, 65536).decode()  # Before the terminal closes.
  os.close(master)
  assert 'epoch 1/12' in drawn and re.search(r'\| [2-5]/10 \[', drawn), drawn
  quiet = io.StringIO()
  screen = _console(quiet, enabled=False)
  screen.note('starting')
  screen.advance(10)
  screen.write_scalars(10, {'train/loss': 1.0})
  screen.finish([{'step': 10, 'val/accuracy': 0.5}], 'runs/x')
  assert quiet.getvalue() == ''
  piped = io.StringIO()  # Not a terminal: plain lines only.
  screen = _console(piped)
  screen.advance(1)
  assert piped.getvalue() == ''
