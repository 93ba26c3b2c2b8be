"Ecosystem conventions: files readable by colleagues, YAML numbers, --print-config without --out."
import json, os, subprocess
from pathlib import Path
import torch

ENV = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', MPLBACKEND='Agg')


def test_every_file_of_a_run_has_the_umask_mode(tmp_path):
    "safetensors writes 0600; every file of a run folder (model, checkpoint, pruned images, logs) now has open()'s mode, 0666 & ~umask."
    from deliberate_practice.trainer import DPTrainer
    from deliberate_practice.config import preset
    from deliberate_practice.store import UMASK
    torch.set_num_threads(1)
    DPTrainer(preset('digits', epochs=3, pool_size=40, patience=1, n_steps=2, lr=1e-6, decay_frac=0.0), out=tmp_path / 'run').fit()
    files = [p for p in (tmp_path / 'run').rglob('*') if p.is_file() and p.name != '.lock']
    assert {p.relative_to(tmp_path / 'run').as_posix() for p in files} >= {'model/model.safetensors', 'model/config.json', 'checkpoint.pt', 'pruned/r00001-00000.safetensors'}
    bad = {p.name: oct(p.stat().st_mode & 0o777) for p in files if p.stat().st_mode & 0o777 != 0o666 & ~UMASK}
    assert not bad, bad
    assert json.loads((tmp_path / 'run' / 'model' / 'config.json').read_text())['label_names'] == list('0123456789')   # the classes, by index


def test_yaml_numbers_and_print_config_without_out(tmp_path):
    (tmp_path / 'c.yaml').write_text('lr: 1e-3\nomega: 5e-2\nepochs: 7\n')        # YAML 1.1 reads 1e-3 as a string
    r = subprocess.run(['dp-train', '--print-config', '--config', str(tmp_path / 'c.yaml')], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)
    assert (c['lr'], c['omega'], c['epochs']) == (0.001, 0.05, 7)
    r = subprocess.run(['dp-train', '--epochs', '2'], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == 'dp-train: error: out is required: pass --out FOLDER (only --print-config runs without one)'
