"Run folders are safe to copy, share and resume: a copy never touches its original, one writer at a time, NaN counted and pruned first."
import hashlib, json, os, shutil, signal, subprocess, time
from pathlib import Path
import pytest, torch
from torch import nn
from deliberate_practice.trainer import DPConfig, DPTrainer
from deliberate_practice.cli import _warn_nonfinite
from conftest import BAD_INPUTS

ENV = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')

pytestmark = pytest.mark.usefixtures('one_thread')   # conftest: one torch thread for this module

def _tree(d:Path)->dict:
    "{relative path: sha256} of every file under d."
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob('*')) if p.is_file()}

def test_copy_then_resume_leaves_the_original_alone(tmp_path):
    "An on-disk pool's folder is stored relative to the run folder: resuming a copy (through refreshes) reads and writes the copy only."
    from deliberate_practice.generators import StableDiffusionGenerator, tiny_sd_components
    gen = StableDiffusionGenerator(**tiny_sd_components(), class_names=['a', 'b', 'c'])
    g = torch.Generator().manual_seed(0)
    data = {k: (torch.rand(6, 3, 16, 16, generator=g), torch.arange(6) % 3) for k in ('val', 'test')}
    cfg = DPConfig(dataset='imagenet100', data_root='unused', sd_path='unused', model='test_vit', image_size=16, pool_size=6, batch_size=3,
                   n_steps=2, epochs=5, patience=1, decay_frac=0.0, omega=0.1)
    orig = tmp_path / 'orig'
    t = DPTrainer(cfg, gen, data, out=orig); t.best_val = 2.0                 # patience runs out every epoch: a refresh after each
    t.fit(stop_after=2)
    assert t.n_refreshes == 2 and (orig / 'pool' / 'index.json').exists()
    shutil.copytree(orig, tmp_path / 'copy')
    before = _tree(orig)
    resumed = DPTrainer.resume(tmp_path / 'copy', gen, data)
    assert resumed.pool.root == tmp_path / 'copy' / 'pool'
    res = resumed.fit()
    assert res['refreshes'] == 4 and _tree(orig) == before                    # two more refreshes, in the copy only
    again = DPTrainer.resume(orig, gen, data).fit()                            # and the original still resumes, to the same result
    assert {k: v for k, v in again.items() if k != 'config'} == {k: v for k, v in res.items() if k != 'config'}

def _lines(d): return (d / 'history.jsonl').read_text().splitlines() if (d / 'history.jsonl').exists() else []

def test_two_writers_then_stale_lock(tmp_path, capsys):
    "A second writer into a running run's folder gets one line naming the holder; after a kill -9 the OS has freed the lock: --resume simply works."
    from deliberate_practice.cli import dp_train
    d, flags = tmp_path / 'run', ['--pool-size', '60', '--n-steps', '4', '--epochs', '150', '--batch-size', '30', '--selection', 'none', '--quiet']
    p = subprocess.Popen(['dp-train', '--out', str(d), *flags], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while len(_lines(d)) < 1:
        assert p.poll() is None, p.stderr.read().decode()
        assert time.time() - t0 < 120
        time.sleep(0.01)
    for argv in (['--resume'], flags):                                        # a second --resume, and a second fresh run, while it runs
        with pytest.raises(SystemExit) as e: dp_train(['--out', str(d), *argv])
        err = capsys.readouterr().err
        good = e.value.code == 2 and err.count('\n') == 1 and f'is in use by process {p.pid} on' in err
        BAD_INPUTS.append((f"second writer {' '.join(argv[:1])}", good))
        assert good, err
    assert p.poll() is None                                                   # the checks above ran while the first run was running
    p.send_signal(signal.SIGKILL); p.wait()
    assert json.loads((d / '.lock').read_text())['pid'] == p.pid               # the killed run left its lock file, but no lock
    dp_train(['--out', str(d), '--resume'])
    assert 'taking over' not in capsys.readouterr().err
    assert len(_lines(d)) == 150 and json.loads((d / '.lock').read_text())['pid'] == os.getpid()   # the file stays, unlocked

class HalfNaN(nn.Module):
    "A classifier whose logits are NaN, in eval mode, for images brighter than `cut` on average: a partly broken classifier."
    def __init__(self, cut=0.25):
        super().__init__(); self.lin, self.cut = nn.Linear(64, 10), cut
    def forward(self, x):
        out = self.lin(x.flatten(1))
        return out if self.training else torch.where((x.flatten(1).mean(1) > self.cut)[:, None], out * float('nan'), out)   # NaN gradients too

def test_nonfinite_scores_pruned_first_and_counted():
    from deliberate_practice.config import Sampling
    from deliberate_practice.pool import Pool
    from deliberate_practice.generators import load_digits_generator
    gen = load_digits_generator()
    pool = Pool.generate(gen, torch.arange(40) % 10, Sampling(n_steps=4), seed=0)
    clf = HalfNaN(cut=pool.get_images(slice(None)).flatten(1).mean(1).quantile(0.7).item()).eval()   # the brightest 30% score NaN
    bad = torch.isnan(pool.score(clf))
    assert 0 < int(bad.sum()) < 20
    info = pool.refresh(gen, clf, prune_frac=0.5, sampling=Sampling(omega=0.2, n_steps=4), seed=1)
    assert set(bad.nonzero().squeeze(1).tolist()) <= set(info['pruned_indices'].tolist())     # NaN-scored images go first
    assert info['n_nonfinite_scores'] == int(bad.sum()) and info['n_guided'] == 20 * 4
    assert info['n_nonfinite'] > 0                                                             # guidance gradients through NaN were dropped
    BAD_INPUTS.append(('partly-NaN classifier: pruned first, counted', True))

def test_nonfinite_in_history_and_warned(capsys):
    from deliberate_practice.generators import load_digits_generator
    from deliberate_practice.data import digits_splits
    t = DPTrainer(DPConfig(pool_size=40, n_steps=4, epochs=3, patience=1, batch_size=16), load_digits_generator(), digits_splits(), HalfNaN(cut=0.3))
    t.best_val = 2.0
    t.fit()
    row = next(r for r in t.history if r['n_guided'])
    assert row['n_nonfinite'] > 0.01 * row['n_guided'] and row['n_nonfinite_scores'] > 0
    _warn_nonfinite(t, row)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and 'guidance gradients as NaN/inf' in err[0] and 'were pruned first' in err[1]
    healthy = dict(row, n_nonfinite=0, n_nonfinite_scores=0)
    _warn_nonfinite(t, healthy); assert capsys.readouterr().err == ''
    BAD_INPUTS.append(('partly-NaN classifier: history counts, warning', True))
