"dp-train as users run it: kill -9 then --resume == an uninterrupted run, --resume checks, the ImageNet preset end to end (bad inputs: test_bad_inputs.py)."
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest
from deliberate_practice.cli import dp_train
from conftest import imagenet_layout

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
    assert sorted(f.name for f in killed.iterdir()) == ['checkpoint.pt', 'curves.png', 'final.json', 'history.csv', 'history.jsonl', 'model']   # no temp or half-written file

def test_resume_refuses_changed_config(tmp_path, capsys):
    dp_train(['--out', str(tmp_path), '--pool-size', '20', '--n-steps', '2', '--epochs', '1', '--quiet'])
    assert _run(['--out', str(tmp_path), '--resume', '--epochs', '2']) == 2
    assert 'epochs is 1 in the checkpoint, got 2' in capsys.readouterr().err
    assert _run(['--out', str(tmp_path), '--epochs', '1']) == 2       # a fresh run into a used folder
    assert 'already holds a run (checkpoint.pt, history.jsonl, history.csv, final.json, model): pass --resume' in capsys.readouterr().err

def test_imagenet100_preset_end_to_end(tmp_path):
    "dp-train --preset imagenet100 (the paper's recipe: ViT, bf16, Mixup/CutMix, EMA, test only at the end) on a tiny ImageNet-100 layout and tiny SD."
    from deliberate_practice.data import IMAGENET100_WNIDS
    from deliberate_practice.generators import StableDiffusionGenerator, tiny_sd_components
    imagenet_layout(tmp_path / 'in', IMAGENET100_WNIDS)
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

def test_progress_lines_before_the_first_epoch(tmp_path):
    "Without a terminal (a cluster log), dp-train prints plain progress lines while it generates the initial pool, then its epoch lines; --quiet prints nothing."
    flags = ['--pool-size', '200', '--n-steps', '2', '--epochs', '1', '--gen-batch-size', '10']
    r = subprocess.run(['dp-train', '--out', str(tmp_path / 'run'), *flags], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    first = next(i for i, l in enumerate(lines) if l.startswith('epoch '))
    prog = [l for l in lines[:first] if l.startswith('initial pool: generating')]
    assert prog[0] == 'initial pool: generating: 200 images' and prog[-1].startswith('initial pool: generating: 200/200 (100%)')
    assert len(prog) >= 6 and all('images/s' in l for l in prog[1:])          # at least every 5%: 20 batches of 5% each
    assert lines[0].startswith('dp-train: starting digits run') and (tmp_path / 'run' / 'curves.png').exists()
    q = subprocess.run(['dp-train', '--out', str(tmp_path / 'quiet'), *flags, '--quiet'], env=ENV, capture_output=True, text=True, timeout=300)
    assert q.returncode == 0 and q.stdout == '', q.stdout

@pytest.fixture(scope='module')
def imagenet_root(tmp_path_factory):
    "A tiny complete ImageNet-100 layout and a saved tiny Stable Diffusion folder."
    from deliberate_practice.data import IMAGENET100_WNIDS
    from deliberate_practice.generators import StableDiffusionGenerator, tiny_sd_components
    root = tmp_path_factory.mktemp('dry')
    imagenet_layout(root / 'in', IMAGENET100_WNIDS)
    StableDiffusionGenerator(**tiny_sd_components(), class_names=['tench']).save_pretrained(root / 'sd')
    return root

def _dry(argv):
    r = subprocess.run(['dp-train', *map(str, argv), '--dry-run'], env=ENV, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr

SMALL = ['--pool-size', '20', '--patience', '2', '--epochs', '10', '--prune-frac', '0.5', '--batch-size', '10', '--mixup', '0', '--cutmix', '0']

def test_dry_run_plan(imagenet_root, tmp_path):
    "On a complete folder and tiny SD components, the plan's counts are the ones worked out by hand in 10_cli (3 refreshes of 10: 50 images, 20 steps); nothing is written."
    code, out, err = _dry(['--preset', 'imagenet100', '--data-root', imagenet_root / 'in', '--sd-path', imagenet_root / 'sd', '--device', 'cpu',
                           '--out', tmp_path / 'run', *SMALL])
    assert code == 0, err
    plan = json.loads(out.strip().splitlines()[-1])
    assert (plan['max_images'], plan['max_guided_images'], plan['max_refreshes'], plan['optimizer_steps']) == (50, 30, 3, 20)
    assert plan['data']['images'] == {'val': 100, 'train': 100} and plan['memory']['generation_gib'] > 0
    assert not (tmp_path / 'run').exists()

def test_dry_run_names_a_missing_class(imagenet_root, tmp_path):
    from deliberate_practice.data import IMAGENET100_WNIDS
    shutil.copytree(imagenet_root / 'in', tmp_path / 'in'); shutil.rmtree(tmp_path / 'in' / 'val' / IMAGENET100_WNIDS[42])
    code, out, err = _dry(['--preset', 'imagenet100', '--data-root', tmp_path / 'in', '--sd-path', imagenet_root / 'sd', '--device', 'cpu', '--out', tmp_path / 'run'])
    assert code == 1 and not out.strip().splitlines()[-1].startswith('{')                   # a summary, but no plan JSON
    assert err.strip().splitlines() == [f"dp-train: dry run: 1 of 100 class folders are missing under {tmp_path / 'in' / 'val'}: {IMAGENET100_WNIDS[42]}; "
                                        "copy them there, or fix --data-root"]

def test_dry_run_memory_over_the_limit(imagenet_root, tmp_path):
    "The memory estimate over --memory-limit fails and says which setting to lower."
    base = ['--preset', 'imagenet100', '--data-root', imagenet_root / 'in', '--sd-path', imagenet_root / 'sd', '--device', 'cpu', '--out', tmp_path / 'run',
            '--model', 'vit_base_patch16_224', '--image-size', '224']
    code, out, err = _dry([*base, '--memory-limit', '0.5'])
    assert code == 1 and 'lower batch_size (now 512, 512 per process' in err, err
    code, out, err = _dry([*base, '--batch-size', '2', '--guidance-batch-size', '1', '--memory-limit', '3'])
    assert code == 0, err
