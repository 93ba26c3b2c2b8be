"""The bad-input suite: every input a user can get wrong gives one line, `dp-train: error: ...`, naming the field or file, and exit status 2,
with nothing run that should not run and nothing written over. Each case is (id, setup(tmp_path, parts) -> argv, what the line must say).
The tally (`conftest.BAD_INPUTS`) is printed at the end of the pytest run."""
import errno, fcntl, json, os, pickle, shutil, socket
from pathlib import Path
import numpy as np
import pytest, torch
from deliberate_practice.cli import dp_train
from deliberate_practice.data import IMAGENET100_WNIDS
from conftest import BAD_INPUTS, imagenet_layout

TINY = ['--pool-size', '20', '--n-steps', '2', '--epochs', '2', '--batch-size', '10', '--quiet']

pytestmark = pytest.mark.usefixtures('one_thread')   # conftest: one torch thread for this module

def _run(argv)->int:
    try: dp_train([str(a) for a in argv])
    except SystemExit as e: return e.code
    return 0

@pytest.fixture(scope='module')
def parts(tmp_path_factory):
    "A finished tiny digits run, a tiny ImageNet-100 layout, a tiny SD folder, and a finished tiny ImageNet run (on-disk pool)."
    from deliberate_practice.generators import StableDiffusionGenerator, tiny_sd_components
    root = tmp_path_factory.mktemp('parts')
    assert _run(['--out', root / 'digits', *TINY]) == 0
    imagenet_layout(root / 'in', IMAGENET100_WNIDS)
    StableDiffusionGenerator(**tiny_sd_components(), class_names=['tench']).save_pretrained(root / 'sd')
    inet = ['--preset', 'imagenet100', '--data-root', root / 'in', '--sd-path', root / 'sd', '--device', 'cpu', '--model', 'test_vit',
            '--image-size', '16', '--pool-size', '100', '--batch-size', '50', '--gen-batch-size', '50', '--epochs', '2', '--n-steps', '2', '--num-workers', '0', '--quiet']
    assert _run(['--out', root / 'inet', *inet]) == 0
    for split in ('val', 'test'): imagenet_layout(root / 'birds', ['blue_jay', 'owl', 'red_kite'], n=2, splits=(split,))
    folder = ['--dataset', 'folder', '--data-root', root / 'birds', '--sd-path', root / 'sd', '--device', 'cpu', '--mixed-precision', 'no', '--model', 'test_vit',
              '--image-size', '16', '--pool-size', '6', '--batch-size', '2', '--epochs', '2', '--n-steps', '2', '--num-workers', '0', '--quiet']
    return dict(root=root, inet=inet, folder=folder)

def _copy(parts, name, tmp_path):
    shutil.copytree(parts['root'] / name, tmp_path / name); return tmp_path / name

class Evil:
    "A pickle that would run a shell command when loaded."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))

def _edit_ckpt(c, edit):
    sd = torch.load(c, weights_only=True); edit(sd); torch.save(sd, c)

def _drop(k): return lambda sd: sd.pop(k)
def _set(f): return f

CHECKPOINT_EDITS = [   # (what, edit of the checkpoint's dict, message): each loads with weights_only, then does not fit the run
    ('no config', _drop('config'), "has no field 'config'"),
    ('no model', _drop('model'), "has no field 'model'"),
    ('unknown config field', lambda sd: sd['config'].update(omgea=1.0), "field 'config' does not fit this run"),
    ('a parameter of the wrong shape', lambda sd: sd['model'].update({k: torch.zeros(3) for k in list(sd['model'])[:1]}), "field 'model' does not fit this run"),
    ('float pool labels', lambda sd: sd['pool'].update(labels=sd['pool']['labels'].float()), "field 'pool.labels' holds torch.float32 labels"),
    ('pool labels out of range', lambda sd: sd['pool']['labels'].__setitem__(0, 99), "field 'pool.labels' holds torch.int64 labels in [0, 99]"),
    ('RNG state of the wrong size', lambda sd: sd['rng'].update(torch=sd['rng']['torch'][:100]), "field 'rng' does not fit this run"),
    ('history not a list of rows', lambda sd: sd.update(history='epoch 1'), "field 'history' is not a list of epoch rows"),
]

def _ckpt(tmp_path, parts, write):
    d = _copy(parts, 'digits', tmp_path); write(d / 'checkpoint.pt'); return ['--out', d, '--resume']

def _old_format(p):
    sd = torch.load(p, weights_only=True); sd['rng']['numpy'] = np.random.get_state(); torch.save(sd, p)

def _missing_class(tmp_path, parts):
    root = tmp_path / 'in'; shutil.copytree(parts['root'] / 'in', root); shutil.rmtree(root / 'val' / IMAGENET100_WNIDS[7])
    return ['--out', tmp_path / 'run', *parts['inet'][:2], '--data-root', root, *parts['inet'][4:]]

def _birds(tmp_path, parts, change):
    "argv of a folder run on a copy of the tiny bird folder after `change(root)`."
    root = tmp_path / 'birds'; shutil.copytree(parts['root'] / 'birds', root); change(root)
    f = parts['folder']; i = f.index('--data-root')
    return ['--out', tmp_path / 'run', *f[:i + 1], root, *f[i + 2:]]

def _sd_changed(tmp_path, parts, change):
    "argv of a folder run with a copy of the tiny SD folder after `change(sd)`."
    sd = tmp_path / 'sd'; shutil.copytree(parts['root'] / 'sd', sd); change(sd)
    f = parts['folder']; i = f.index('--sd-path')
    return ['--out', tmp_path / 'run', *f[:i + 1], sd, *f[i + 2:]]

def _unet_in_channels(sd, n):
    f = sd / 'unet' / 'config.json'; f.write_text(json.dumps({**json.loads(f.read_text()), 'in_channels': n}))

def _corrupt_jpeg(tmp_path, parts):
    root = tmp_path / 'in'; shutil.copytree(parts['root'] / 'in', root)
    (root / 'val' / IMAGENET100_WNIDS[3] / f'{IMAGENET100_WNIDS[3]}_0.JPEG').write_bytes(b'\xff\xd8\xff not a jpeg')
    return ['--out', tmp_path / 'run', *parts['inet'][:2], '--data-root', root, *parts['inet'][4:-3], '--num-workers', '2', '--quiet']

def _sd_without(tmp_path, parts, part):
    sd = tmp_path / 'sd'; shutil.copytree(parts['root'] / 'sd', sd); shutil.rmtree(sd / part)
    return ['--out', tmp_path / 'run', *parts['inet'][:4], '--sd-path', sd, *parts['inet'][6:]]

def _truncate_shard(tmp_path, parts):
    d = _copy(parts, 'inet', tmp_path)
    shard = sorted((d / 'pool').glob('shard-*.safetensors'))[0]; shard.write_bytes(shard.read_bytes()[:40])
    return ['--out', d, '--resume']

def _pool_deleted(tmp_path, parts):
    d = _copy(parts, 'inet', tmp_path); shutil.rmtree(d / 'pool')
    return ['--out', d, '--resume']

def _no_checkpoint(tmp_path, parts, *extra):
    d = _copy(parts, 'digits', tmp_path); (d / 'checkpoint.pt').unlink(); return ['--out', d, *extra]

_HELD = []   # lock files this process holds on another open file, as a live run holds its folder's

def _locked(tmp_path, parts):
    d = tmp_path / 'run'; d.mkdir(); (d / '.lock').write_text(json.dumps(dict(pid=1, host=socket.gethostname())))   # names pid 1 as holder
    fd = os.open(d / '.lock', os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); _HELD.append(fd)
    return ['--out', d, *TINY]

def _disk_full(tmp_path, parts, monkeypatch):
    def full(*a, **kw): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(torch, 'save', full)
    return ['--out', tmp_path / 'run', *TINY]

FLAGS = [   # (flags, message) on an empty --out
    (['--prune-frac', '1.5'], 'prune_frac must be in [0, 1], got 1.5'),
    (['--epochs', 'ten'], "epochs must be an integer, got 'ten'"),
    (['--omega', 'lots'], "omega must be a finite number, got 'lots'"),
    (['--omega', 'nan'], 'omega must be a finite number, got nan'),
    (['--omega', '1e308'], 'omega must be <= 100'),
    (['--pool-size', '100000000000'], 'pool_size must be <= 1e+08'),
    (['--pool-size', '1e11'], "pool_size must be an integer, got '1e11'"),
    (['--lr', '1e30'], 'lr must be <= 10'),
    (['--selection', 'hardest'], 'selection must be one of'),
    (['--scheduler', 'step'], 'scheduler must be one of'),
    (['--gen-batch-size', '0'], 'gen_batch_size must be >= 1 or None, got 0'),
    (['--guidance-batch-size', '-1'], 'guidance_batch_size must be >= 1 or None, got -1'),
    (['--device', 'gpu0'], "device must be a torch device"),
    (['--mixed-precision', 'fp16'], "mixed_precision must be 'no' or 'bf16' off CUDA"),
    (['--mixed-precision', 'fp8'], 'mixed_precision must be one of'),
    (['--patience', '-2'], 'patience must be >= 1, got -2'),
    (['--warmup-frac', '0.5', '--decay-frac', '0.6'], 'decay_frac must be in [0, 1 - warmup_frac = 0.5], got 0.6'),
    (['--dataset', 'imagenet100'], 'data_root must be set'),
    (['--preset', 'cifar'], "argument --preset: invalid choice: 'cifar'"),
    (['--prune-fraction', '0.5'], 'unrecognized arguments: --prune-fraction'),
    (['--threads', '0'], 'threads must be >= 1, got 0'),
    (['--config', '/nonexistent/run.json'], 'config file /nonexistent/run.json cannot be read'),
    (['--seed', str(2**40)], 'seed must be <= 4.29497e+09'),
]

CASES = [(f"flag {' '.join(f)}", (lambda f: lambda t, p: ['--out', t / 'run', *f])(f), m) for f, m in FLAGS] + [
    ('no --out', lambda t, p: [], 'out is required: pass --out FOLDER'),
    ('--config with an unknown field', lambda t, p: ((t / 'c.json').write_text('{"omgea": 1}'), ['--out', t / 'run', '--config', t / 'c.json'])[1],
     'omgea is not a DPConfig field'),
    ('--config not JSON', lambda t, p: ((t / 'c.json').write_text('omega: 1'), ['--out', t / 'run', '--config', t / 'c.json'])[1], 'is not valid JSON'),
    ('--out ""', lambda t, p: ['--out', '', *TINY], "out must be a folder path, got ''"),
    ('--out is a file', lambda t, p: ((t / 'f').write_text('x'), ['--out', t / 'f', *TINY])[1], 'is a file, not a folder'),
    ('--out under a file', lambda t, p: ((t / 'f').write_text('x'), ['--out', t / 'f' / 'run', *TINY])[1], 'cannot be written'),
    ('--resume --epochs 3, finished run without checkpoint', lambda t, p: _no_checkpoint(t, p, '--resume', '--epochs', '3'), 'epochs is 2 in the run, got 3'),
    ('new run over a finished run without checkpoint', lambda t, p: _no_checkpoint(t, p, *TINY), 'already holds a run (history.jsonl, history.csv, final.json, model, run.json)'),
    ('new run over a checkpoint', lambda t, p: ['--out', _copy(p, 'digits', t), *TINY], 'already holds a run (checkpoint.pt'),
    ('new run over an on-disk pool', lambda t, p: ((t / 'run' / 'pool').mkdir(parents=True), ['--out', t / 'run', *TINY])[1], 'already holds a run (pool)'),
    ('--resume with other settings', lambda t, p: ['--out', _copy(p, 'digits', t), '--resume', '--epochs', '3', '--omega', '0.5'],
     'epochs is 2 in the run, got 3; omega is 0.2 in the run, got 0.5'),
    ('checkpoint: zero bytes', lambda t, p: _ckpt(t, p, lambda c: c.write_bytes(b'')), 'is not a readable checkpoint'),
    ('checkpoint: truncated', lambda t, p: _ckpt(t, p, lambda c: c.write_bytes(c.read_bytes()[:1000])), 'is not a readable checkpoint'),
    ('checkpoint: random bytes', lambda t, p: _ckpt(t, p, lambda c: c.write_bytes(np.random.default_rng(0).bytes(5000))), 'is not a readable checkpoint'),
    ('checkpoint: old format (numpy pickled)', lambda t, p: _ckpt(t, p, _old_format), 'convert_checkpoint'),
    *[(f'checkpoint: {what}', (lambda f: lambda t, p: _ckpt(t, p, lambda c: _edit_ckpt(c, f)))(f), m) for what, f, m in CHECKPOINT_EDITS],
    ('--resume --preset of another dataset', lambda t, p: ['--out', _copy(p, 'digits', t), '--resume', '--preset', 'imagenet100'],
     "dataset is 'digits' in the run, got 'imagenet100' (preset imagenet100)"),
    ('pool smaller than the classes', lambda t, p: ['--out', t / 'run', '--pool-size', '5', '--epochs', '2', '--quiet'],
     'pool_size is 5 but the run has 10 classes: every class needs an image; pass --pool-size 10 or more'),
    ('folder locked by a live process', _locked, 'is in use by process 1 on'),
    ('SD folder missing', lambda t, p: ['--out', t / 'run', *p['inet'][:4], '--sd-path', t / 'nope', *p['inet'][6:]], 'is neither a local folder'),
    ('SD folder without its VAE', lambda t, p: _sd_without(t, p, 'vae'), "lacks the diffusers subfolders ['vae']"),
    ('ImageNet class folder missing', _missing_class, f"1 of 100 class folders are missing under"),
    ('folder: no val/', lambda t, p: _birds(t, p, lambda r: shutil.rmtree(r / 'val')), 'has no val/ folder: put the real validation images in'),
    ('folder: val and test with different classes', lambda t, p: _birds(t, p, lambda r: shutil.rmtree(r / 'test' / 'owl')),
     'test/ and val/ hold different classes (only in val: owl; only in test: none)'),
    ('folder: an empty class', lambda t, p: _birds(t, p, lambda r: [f.unlink() for f in (r / 'val' / 'owl').iterdir()]), 'owl holds no images'),
    ('folder: an unreadable image', lambda t, p: _birds(t, p, lambda r: (r / 'test' / 'red_kite' / 'red_kite_1.JPEG').write_bytes(b'\xff\xd8 not a jpeg')),
     'red_kite_1.JPEG cannot be read'),
    ('folder: classes.json names a class not on disk', lambda t, p: _birds(t, p, lambda r: (r / 'classes.json').write_text('{"eagle": "an eagle"}')),
     'names 1 class(es) with no folder under val/: eagle'),
    ('folder: classes.json not JSON', lambda t, p: _birds(t, p, lambda r: (r / 'classes.json').write_text('{"owl": ')), 'classes.json cannot be read as JSON'),
    ('folder: one class only', lambda t, p: _birds(t, p, lambda r: [shutil.rmtree(r / s / c) for s in ('val', 'test') for c in ('owl', 'red_kite')]),
     'a classifier needs at least 2'),
    ('folder: --prompt-template without {name}', lambda t, p: ['--out', t / 'run', *p['folder'], '--prompt-template', 'a photo of a {bird}'],
     'prompt_template must be a prompt with one {name}'),
    ('SD folder: Stable Diffusion XL', lambda t, p: _sd_changed(t, p, lambda sd: (sd / 'text_encoder_2').mkdir()), 'is a Stable Diffusion XL folder'),
    ('SD folder: inpainting UNet', lambda t, p: _sd_changed(t, p, lambda sd: _unet_in_channels(sd, 9)), 'its UNet takes 9 input channels'),
    ('corrupt JPEG in val', _corrupt_jpeg, f'{IMAGENET100_WNIDS[3]}_0.JPEG'),
    ('pool shard truncated', _truncate_shard, 'is unreadable'),
    ('pool folder deleted', _pool_deleted, 'is missing: the run'),
    ('not enough disk for the pool', lambda t, p: ['--out', t / 'run', *p['inet'][:-1], '--pool-size', '100000000'], 'GiB of disk (pool shards and checkpoints)'),
]
if not torch.cuda.is_available(): CASES.append(('--device cuda without a GPU', lambda t, p: ['--out', t / 'run', '--device', 'cuda', *TINY], 'torch sees no CUDA GPU'))

@pytest.mark.parametrize('case,setup,msg', CASES, ids=[c for c, _, _ in CASES])
def test_bad_input_one_line(case, setup, msg, parts, tmp_path, capsys):
    argv = setup(tmp_path, parts)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob('*') if p.is_file() and p.name != '.lock'}   # taking the lock writes its holder there
    capsys.readouterr()
    code, err = _run(argv), capsys.readouterr().err
    good = code == 2 and err.count('\n') == 1 and err.startswith('dp-train: error: ') and msg in err
    BAD_INPUTS.append((case, good))
    assert good, (code, err)
    changed = [p for p, t in before.items() if not p.exists() or p.stat().st_mtime_ns != t]
    assert not changed, changed                                          # nothing that was there is written over or removed

def test_malicious_checkpoint_runs_nothing(parts, tmp_path, capsys):
    "A crafted checkpoint.pt is refused by `--resume` and by dp-reproduce's resume path, and its code never runs."
    from deliberate_practice.ablation import run_row, row_config
    marker = tmp_path / 'pwned'
    argv = _ckpt(tmp_path, parts, lambda c: torch.save({'config': Evil(marker)}, c))
    code, err = _run(argv), capsys.readouterr().err
    good = code == 2 and 'refused, nothing in it ran' in err and err.count('\n') == 1 and not marker.exists()
    BAD_INPUTS.append(('checkpoint: malicious pickle', good))
    assert good, err
    cfg = row_config('dp-p8-100', seed=1, pool_size=20, epochs=2)
    (tmp_path / 'repro' / 'runs' / 'dp-p8-100-s1').mkdir(parents=True)
    torch.save({'config': Evil(marker)}, tmp_path / 'repro' / 'runs' / 'dp-p8-100-s1' / 'checkpoint.pt')
    with pytest.raises(ValueError, match='refused, nothing in it ran'): run_row(cfg, 'dp-p8-100', tmp_path / 'repro')
    assert not marker.exists()

def test_disk_full_names_the_file(parts, tmp_path, capsys, monkeypatch):
    argv = _disk_full(tmp_path, parts, monkeypatch)
    code, err = _run(argv), capsys.readouterr().err
    good = code == 2 and f"disk full while writing {tmp_path / 'run' / 'checkpoint.pt'}" in err and err.count('\n') == 1
    BAD_INPUTS.append(('disk full', good))
    assert good, err
    assert sorted(p.name for p in (tmp_path / 'run').iterdir()) == ['.lock', 'run.json']     # no half-written or temp file; the record, to --resume once there is room
    fd = os.open(tmp_path / 'run' / '.lock', os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); os.close(fd)   # and the lock released
