"Experiment trackers through accelerate (`dp-train --report-to`): TensorBoard's event files after a killed and resumed run, missing packages, the alias."
import json, os, signal, subprocess
import pytest
from deliberate_practice.cli import dp_train, build_parser
from deliberate_practice.runfolder import read_tensorboard, TENSORBOARD
import deliberate_practice.runfolder as runfolder

ENV = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', MPLBACKEND='Agg')
# the quick digits run of tests/test_cli.py, 3 epochs: the test split scored at epochs 2 and 3 only; omega not its default
FLAGS = ['--pool-size', '20', '--n-steps', '2', '--epochs', '3', '--test-every', '2', '--patience', '1', '--omega', '0.3', '--quiet']

def _run(argv):
    try: dp_train([str(a) for a in argv])
    except SystemExit as e: return e.code
    return 0


def test_tensorboard_killed_and_resumed(tmp_path):
    "Killed at epoch 2 and resumed (`--tensorboard`, the alias): one val_acc point per epoch, history.jsonl's; test_acc only where scored; the config as hparams."
    out = tmp_path / 'run'
    r = subprocess.run(['dp-train', '--out', str(out), '--report-to', 'tensorboard', *FLAGS], env={**ENV, 'DP_FAULT': 'evaluate:2:KILL'},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert [s for s, _ in read_tensorboard(out / TENSORBOARD)[0]['val_acc']] == [1]           # epoch 1 logged before the kill
    r = subprocess.run(['dp-train', '--out', str(out), '--resume', '--tensorboard', '--quiet'], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    hist = [json.loads(l) for l in (out / 'history.jsonl').read_text().splitlines()]
    assert [h['test_acc'] is None for h in hist] == [True, False, False]
    scalars, hp = read_tensorboard(out / TENSORBOARD)
    assert [s for s, _ in scalars['val_acc']] == [1, 2, 3]
    assert [v for _, v in scalars['val_acc']] == pytest.approx([h['val_acc'] for h in hist], abs=1e-6)
    assert [s for s, _ in scalars['test_acc']] == [2, 3]                                      # no point for epoch 1: not scored
    assert [v for _, v in scalars['test_acc']] == pytest.approx([h['test_acc'] for h in hist[1:]], abs=1e-6)
    assert [v for _, v in scalars['n_generated']] == [h['n_generated'] for h in hist]
    assert (hp['omega'], hp['pool_size'], hp['epochs'], hp['sd_path']) == (pytest.approx(0.3), 20, 3, 'None')


@pytest.mark.parametrize('name', ['wandb', 'mlflow', 'trackio'])
def test_missing_tracker_is_one_line_before_the_run(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runfolder, 'installed_trackers', lambda: ['tensorboard'])
    assert _run(['--out', tmp_path / 'run', '--report-to', f'tensorboard,{name}', *FLAGS]) == 2
    assert capsys.readouterr().err == f'dp-train: error: --report-to {name} needs the {name} package: pip install {name}\n'
    assert not (tmp_path / 'run').exists()                                                    # nothing written, no model loaded
    assert _run(['--out', tmp_path / 'run', '--report-to', name, *FLAGS, '--dry-run']) == 1
    assert f'dp-train: dry run: --report-to {name} needs the {name} package: pip install {name}\n' in capsys.readouterr().err


def test_all_without_trackers_warns(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runfolder, 'installed_trackers', lambda: [])
    assert _run(['--out', tmp_path / 'run', '--report-to', 'all', *FLAGS, '--dry-run']) == 0
    out, err = capsys.readouterr()
    assert err == 'dp-train: warning: --report-to all: none of tensorboard, wandb, trackio, mlflow is installed: the run reports to no tracker\n'
    assert json.loads(out.splitlines()[-1])['trackers'] == []
    monkeypatch.setattr(runfolder, 'installed_trackers', lambda: ['tensorboard', 'mlflow'])
    assert _run(['--out', tmp_path / 'run', '--report-to', 'all', *FLAGS, '--dry-run']) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])['trackers'] == ['tensorboard', 'mlflow']


def test_report_to_flags(capsys):
    p = build_parser()
    assert p.parse_args(['--tensorboard']).report_to == p.parse_args(['--report-to', 'tensorboard']).report_to == ['tensorboard']
    assert p.parse_args(['--report_to', 'wandb', '--tensorboard']).report_to == ['wandb', 'tensorboard']   # both spellings; the alias adds
    assert 'the same as --report-to tensorboard' in ' '.join(p.format_help().split())
    assert _run(['--out', 'o', '--report-to', 'comet']) == 2
    assert capsys.readouterr().err == "dp-train: error: report_to must be among tensorboard, wandb, trackio, mlflow, all, none (a comma list), got 'comet'\n"
    assert _run(['--out', 'o', '--report-to', 'none', '--tensorboard']) == 2
    assert capsys.readouterr().err == 'dp-train: error: report_to none turns tracking off: it cannot be given with tensorboard\n'


LAUNCH = ['accelerate', 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1', '--mixed_precision', 'no',
          '--dynamo_backend', 'no', '--main_process_port', '0', '--no_python']   # as tests/test_distributed.py: 2 CPU processes over gloo

def test_two_processes_log_once(tmp_path):
    "Under `accelerate launch` only the main process logs: one writer, one point per epoch; the process group outlives the trackers."
    out = tmp_path / 'run'
    r = subprocess.run([*LAUNCH, 'dp-train', '--out', str(out), '--report-to', 'tensorboard', '--device', 'cpu', *FLAGS], env=ENV,
                       capture_output=True, text=True, timeout=300)
    if r.returncode and 'deliberate_practice' not in r.stderr: pytest.skip(f"accelerate launch could not start 2 processes here: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / 'final.json').read_text())['world_size'] == 2
    hist = [json.loads(l) for l in (out / 'history.jsonl').read_text().splitlines()]
    scalars, hp = read_tensorboard(out / TENSORBOARD)
    assert [s for s, _ in scalars['val_acc']] == [1, 2, 3] and hp['omega'] == pytest.approx(0.3)
    assert [v for _, v in scalars['val_acc']] == pytest.approx([h['val_acc'] for h in hist], abs=1e-6)
    assert len(list((out / TENSORBOARD).glob('*/events.out.tfevents.*'))) == 1                 # the main process's writer only
