"dp-train as users run it: kill -9 then --resume == an uninterrupted run, --resume checks, the ImageNet preset end to end (bad inputs: test_bad_inputs.py)."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
from deliberate_practice.cli import dp_train

@pytest.fixture(scope='module', autouse=True)
def one_thread():
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def _run(argv):
    try: dp_train(argv)
    except SystemExit as e: return e.code
    return 0

ENV = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')   # tiny models: one thread (see test_trainer.one_thread)
FLAGS = ['--pool-size', '60', '--n-steps', '4', '--epochs', '6', '--patience', '1', '--batch-size', '16', '--quiet']

def test_bad_flag_subprocess_no_traceback(tmp_path):
    r = subprocess.run(['dp-train', '--out', str(tmp_path), '--prune-frac', '1.5'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and r.stdout == ''
    assert r.stderr == 'dp-train: error: prune_frac must be in [0, 1], got 1.5\n'

def _lines(d): return [json.loads(l) for l in (d / 'history.jsonl').read_text().splitlines()] if (d / 'history.jsonl').exists() else []
def _strip(h): return [{k: v for k, v in r.items() if k != 'wall_s'} for r in h]

def test_kill9_then_resume_equals_uninterrupted(tmp_path):
    killed, ref = tmp_path / 'killed', tmp_path / 'ref'
    p = subprocess.Popen(['dp-train', '--out', str(killed), *FLAGS], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while len(_lines(killed)) < 2:                             # history.jsonl is written after the epoch's checkpoint
        assert p.poll() is None, p.stderr.read().decode()
        assert time.time() - t0 < 120
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL); p.wait()
    n_done = len(_lines(killed))
    assert 2 <= n_done < 6, n_done                              # killed mid-run
    assert not (killed / 'final.json').exists()
    dp_train(['--out', str(ref), *FLAGS])                       # the uninterrupted run, in this process
    r = subprocess.run(['dp-train', '--out', str(killed), '--resume', '--quiet'], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _strip(_lines(killed)) == _strip(_lines(ref))
    assert json.loads((killed / 'final.json').read_text()) == json.loads((ref / 'final.json').read_text())
    assert sorted(f.name for f in killed.iterdir()) == ['checkpoint.pt', 'final.json', 'history.csv', 'history.jsonl']   # no temp or half-written file

def test_resume_refuses_changed_config(tmp_path, capsys):
    dp_train(['--out', str(tmp_path), '--pool-size', '20', '--n-steps', '2', '--epochs', '1', '--quiet'])
    assert _run(['--out', str(tmp_path), '--resume', '--epochs', '2']) == 2
    assert 'epochs is 1 in the checkpoint, got 2' in capsys.readouterr().err
    assert _run(['--out', str(tmp_path), '--epochs', '1']) == 2       # a fresh run into a used folder
    assert 'already holds a run (checkpoint.pt, history.jsonl, history.csv, final.json): pass --resume' in capsys.readouterr().err

def _imagenet_layout(root, wnids, n=1, size=(20, 30)):
    "A tiny ImageNet root: train/ and val/ with n random images in each wnid folder."
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for w in wnids:
            (root / split / w).mkdir(parents=True)
            for i in range(n): Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / w / f'{w}_{i}.JPEG')

def test_imagenet100_preset_end_to_end(tmp_path):
    "dp-train --preset imagenet100 (the paper's recipe: ViT, bf16, Mixup/CutMix, EMA, test only at the end) on a tiny ImageNet-100 layout and tiny SD."
    from deliberate_practice.data import IMAGENET100_WNIDS
    from deliberate_practice.generators import StableDiffusionGenerator, tiny_sd_components
    _imagenet_layout(tmp_path / 'in', IMAGENET100_WNIDS)
    StableDiffusionGenerator(**tiny_sd_components(), class_names=['tench']).save_pretrained(tmp_path / 'sd')
    out = tmp_path / 'run'
    r = subprocess.run(['dp-train', '--preset', 'imagenet100', '--data-root', str(tmp_path / 'in'), '--sd-path', str(tmp_path / 'sd'), '--out', str(out),
                        '--device', 'cpu', '--model', 'test_vit', '--image-size', '32', '--pool-size', '8', '--batch-size', '4', '--epochs', '3',
                        '--n-steps', '2', '--patience', '1', '--gen-batch-size', '4', '--guidance-batch-size', '2', '--num-workers', '2'],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    fin = json.loads((out / 'final.json').read_text())
    c = fin['config']
    assert (c['dataset'], c['pool_size'], c['mixed_precision'], c['mixup'], c['ema_decay'], c['test_every'], c['lr']) == ('imagenet100', 8, 'bf16', 0.5, 0.998, 0, 3e-3)
    hist = [json.loads(l) for l in (out / 'history.jsonl').read_text().splitlines()]
    assert [h['test_acc'] is None for h in hist] == [True, True, False]          # the real test split (ImageNet train/) only at the end
    assert fin['test_acc'] == hist[-1]['test_acc'] and 0 <= fin['test_acc'] <= 1
    assert sum(fin['pool_class_counts']) == 8 and fin['pool_class_counts'][:8] == [1] * 8
    assert (out / 'pool' / 'index.json').exists()                                 # ImageNet pools live on disk, in shards
    assert 'epoch   3/3' in r.stdout and 'test -' in r.stdout
