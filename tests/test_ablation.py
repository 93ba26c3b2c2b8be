"The ablation runner and `dp-reproduce` beyond the docs: presets of every row, the results schema, crash-continue, shared pools, worker processes, claims, --plot, bad arguments."
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
import torch
from deliberate_practice import ablation
from deliberate_practice.ablation import (ROWS, REAL_ROW, PAPER_TABLE1, SCALES, row_config, reproduce, run_dir, run_row,
                                          RESULT, RESULTS, TABLE, FIGURE, scale_parts, pool_key, initial_pool, claims, paired_ci, image_share)
from deliberate_practice.config import Sampling
from deliberate_practice.trainer import DPTrainer, CHECKPOINT
from deliberate_practice.cli import dp_reproduce

TINY = dict(pool_size=40, epochs=3, patience=1, n_steps=5, lr=1e-6, decay_frac=0.0)   # lr ~0: val plateaus, so a refresh follows epoch 2
IMAGENET = dict(data_root='/nowhere/imagenet', sd_path='/nowhere/sd15')

@pytest.fixture(scope='module')
def parts():
    return scale_parts(row_config('static-wsd'))

def test_row_names():
    assert ROWS == ('static-cosine', 'static-wsd', 'dp-p10-25', 'dp-p8-25', 'dp-p8-50', 'dp-p8-75', 'dp-p8-100', 'random-p8-100')
    assert tuple(PAPER_TABLE1) == ROWS and {'digits', 'imagenet100', 'imagenet1k'} <= set(SCALES)

@pytest.mark.parametrize('scale', ['digits', 'imagenet100', 'imagenet1k'])
def test_presets_follow_table1(scale):
    kw = {} if scale == 'digits' else IMAGENET
    p8, p10 = ablation.PATIENCE[scale][8], ablation.PATIENCE[scale][10]
    assert p10 > p8
    expect = {'static-cosine': ('cosine', 'none', 0.0), 'static-wsd': ('wsd', 'none', 0.0), 'dp-p10-25': ('wsd', 'easiest', .25),
              'dp-p8-25': ('wsd', 'easiest', .25), 'dp-p8-50': ('wsd', 'easiest', .5), 'dp-p8-75': ('wsd', 'easiest', .75),
              'dp-p8-100': ('wsd', 'easiest', 1.0), 'random-p8-100': ('wsd', 'random', 1.0)}
    for row, (sched, sel, prune) in expect.items():
        c = row_config(row, scale, **kw)
        assert (c.scheduler, c.selection, c.prune_frac, c.dataset) == (sched, sel, prune, scale), row
        if sel != 'none': assert c.patience == (p10 if 'p10' in row else p8), row
        if sel == 'random': assert c.omega == 0.0
        if sel == 'easiest': assert c.omega > 0
    base = {f: v for f, v in row_config('static-wsd', scale, **kw).to_dict().items() if f not in ('scheduler', 'selection', 'prune_frac', 'patience', 'omega', 'cfg_scale')}
    for row in ROWS:   # rows differ only in the fields Table 1 varies
        assert {f: v for f, v in row_config(row, scale, **kw).to_dict().items() if f in base} == base, row

def test_imagenet_presets_are_the_papers():
    c100, c1k = row_config('dp-p8-100', 'imagenet100', **IMAGENET), row_config('dp-p8-100', 'imagenet1k', **IMAGENET)
    assert (c100.pool_size, c1k.pool_size) == (65_000, 650_000)
    assert (c100.lr, c100.batch_size, c1k.lr, c1k.batch_size) == (3e-3, 2048, 1.6e-3, 4096)   # the long version's global batch
    assert (c100.device_batch_size, c1k.device_batch_size) == (64, 128)                         # per device, the rest by gradient accumulation
    for c in (c100, c1k):
        assert (c.model, c.omega, c.cfg_scale, c.cfg_scale_init, c.scheduler) == ('vit_base_patch16_224', 0.05, 4.0, 3.0, 'wsd')
        assert (c.label_smoothing, c.mixup, c.cutmix) == (0.11, 0.5, 1.0) and c.ema_decay > 0
        assert c.image_size == 224                     # the classifier trains at 224, not at SD's 512
    assert row_config('random-p8-100', 'imagenet100', **IMAGENET).cfg_scale == 3.0          # random regeneration: the no-feedback lambda

def test_tiny_run_schema(tmp_path, parts):
    res = reproduce('digits', seeds=[0], rows=['static-wsd', 'dp-p8-100'], out=tmp_path, progress=False, generator=parts[0], data=parts[1], **TINY)
    saved = json.loads((tmp_path / RESULTS).read_text())
    assert saved == res and [(r['row'], r['seed']) for r in saved] == [('static-wsd', 0), ('dp-p8-100', 0)]
    for r in saved:
        assert {'row', 'seed', 'val_acc', 'test_acc', 'n_generated', 'wall_s', 'config', 'history'} <= set(r)
        assert [h['epoch'] for h in r['history']] == [1, 2, 3]
        assert all(set(h) == {'epoch', 'n_generated', 'val_acc', 'test_acc'} for h in r['history'])
        assert r['test_acc'] == r['history'][-1]['test_acc'] and r['n_generated'] == r['history'][-1]['n_generated']
        assert r['config'] == row_config(r['row'], seed=0, **TINY).to_dict() and r['wall_s'] > 0
    assert saved[0]['n_generated'] == 40 and saved[1]['n_generated'] > 40          # static never regenerates, DP did
    md = (tmp_path / TABLE).read_text()
    assert '| static-wsd | WSD | - | 0% |' in md and '32.96' in md and '| dp-p8-100 | WSD | 1 (8) | 100% |' in md
    assert (tmp_path / FIGURE).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

def test_crash_continue(tmp_path, parts, monkeypatch):
    gen, data = parts
    cfg_a, cfg_b = row_config('static-wsd', seed=0, **TINY), row_config('dp-p8-100', seed=0, **TINY)
    a = run_row(cfg_a, 'static-wsd', tmp_path, gen, data)                          # finished before the crash
    DPTrainer(cfg_b, generator=gen, data=data, out=run_dir(tmp_path, 'dp-p8-100', 0)).fit(stop_after=2)   # killed after epoch 2
    assert (run_dir(tmp_path, 'dp-p8-100', 0) / CHECKPOINT).exists() and not (run_dir(tmp_path, 'dp-p8-100', 0) / RESULT).exists()
    epochs_run = []
    fit = DPTrainer.fit
    def counting_fit(self, *a, **k): epochs_run.append((self.cfg.selection, self.epoch)); return fit(self, *a, **k)
    monkeypatch.setattr(DPTrainer, 'fit', counting_fit)
    res = reproduce('digits', seeds=[0], rows=['static-wsd', 'dp-p8-100'], out=tmp_path, progress=False, generator=gen, data=data, **TINY)
    assert epochs_run == [('easiest', 2)]                                          # static-wsd not rerun; DP resumed at epoch 2
    assert res[0] == a and [h['epoch'] for h in res[1]['history']] == [1, 2, 3]
    fresh = run_row(cfg_b, 'dp-p8-100', tmp_path / 'fresh', gen, data)             # the resumed run equals an uninterrupted one
    assert [(h['val_acc'], h['n_generated']) for h in fresh['history']] == [(h['val_acc'], h['n_generated']) for h in res[1]['history']]

def test_other_config_in_out_is_an_error(tmp_path, parts):
    run_row(row_config('static-wsd', seed=0, **TINY), 'static-wsd', tmp_path, *parts)
    with pytest.raises(ValueError, match='another config'):
        run_row(row_config('static-wsd', seed=0, **dict(TINY, epochs=4)), 'static-wsd', tmp_path, *parts)

def _results_dir(tmp_path):
    src = Path(__file__).parents[1] / 'nbs' / 'ablation_digits' / RESULTS
    d = tmp_path / 'saved'; d.mkdir()
    shutil.copy(src, d / RESULTS)
    return d

def test_plot_from_saved_results(tmp_path):
    d = _results_dir(tmp_path)
    r = subprocess.run(['dp-reproduce', '--plot', '--out', str(d)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert '| dp-p8-100 | WSD |' in (d / TABLE).read_text() and '| DP-100 - random (points) |' in r.stdout
    assert (d / FIGURE).stat().st_size > 10_000
    assert sorted(p.name for p in d.iterdir()) == [RESULTS, TABLE, FIGURE]         # nothing trained

@pytest.mark.parametrize('argv, name', [
    (['--scale', 'cifar'], 'scale'), (['--rows', 'dp-p8-10'], 'rows'), (['--seeds', '1', 'two'], 'seeds'), (['--seeds', '-1'], 'seeds'),
    (['--overrides', 'omgea=0.1'], 'omgea'), (['--overrides', 'epochs=0'], 'epochs'), (['--scale', 'imagenet100'], 'data_root'),
    (['--plot'], 'results.json'), (['--config', '/nonexistent.json'], 'cannot be read'), (['--workers', '0'], 'workers'), (['--threads', '0'], 'threads'), (['--rows', REAL_ROW], 'real_subset')])
def test_bad_arguments(argv, name, tmp_path, capsys):
    with pytest.raises(SystemExit) as e: dp_reproduce(argv + ['--out', str(tmp_path / 'out')])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('dp-reproduce: error:') and name in err and err.count('\n') == 1
    assert not (tmp_path / 'out' / 'runs').exists()

def test_bad_argument_from_the_shell(tmp_path):
    r = subprocess.run(['dp-reproduce', '--rows', 'nope', '--out', str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and 'rows' in r.stderr

def test_imagenet_parts_at_image_size(tmp_path):
    "scale_parts resizes SD's images and loads the real splits at the config's image_size; a generator of another size is refused."
    import numpy as np
    from PIL import Image
    from deliberate_practice.data import IMAGENET100_WNIDS
    from deliberate_practice.generators import StableDiffusionGenerator, tiny_sd_components
    from deliberate_practice.trainer import _default_parts
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for w in IMAGENET100_WNIDS:
            (tmp_path / 'in' / split / w).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / 'in' / split / w / f'{w}_0.png')
    StableDiffusionGenerator(**tiny_sd_components(), class_names=['tench']).save_pretrained(tmp_path / 'sd')
    cfg = row_config('dp-p8-100', 'imagenet100', data_root=str(tmp_path / 'in'), sd_path=str(tmp_path / 'sd'), device='cpu', image_size=24)
    gen, data = scale_parts(cfg)
    assert (gen.image_shape, gen.generation_size) == ((3, 24, 24), 16)
    assert gen.sample([0, 5], Sampling(n_steps=2)).shape == (2, 3, 24, 24)
    assert data['val'][0][0].shape == data['test'][0][0].shape == (3, 24, 24)
    with pytest.raises(ValueError, match='image_size is 32 but the generator returns'):
        _default_parts(row_config('dp-p8-100', 'imagenet100', **IMAGENET, device='cpu', image_size=32), gen, data, None)


def test_rows_of_a_seed_share_the_pool_each_would_build(parts):
    "Every row's own initial pool is the shared one, bit for bit: no row field enters the pool (so sharing it changes nothing)."
    gen, data = parts
    cfgs = [row_config(r, seed=3, pool_size=30, n_steps=3) for r in ROWS]
    assert len({pool_key(c) for c in cfgs}) == 1
    shared, _ = initial_pool(cfgs[0], gen, data)
    for c in cfgs[1:]:
        t = DPTrainer(c, generator=gen, data=data); t.build_pool()
        assert torch.equal(t.pool.get_images(list(range(len(t.pool)))), shared.get_images(list(range(len(shared))))) and torch.equal(t.pool.labels, shared.labels)
    other, _ = initial_pool(row_config('static-wsd', seed=4, pool_size=30, n_steps=3), gen, data)
    assert not torch.equal(other.get_images(list(range(30))), shared.get_images(list(range(30))))

def test_a_row_from_the_shared_pool_is_the_row_run_alone(tmp_path, parts):
    gen, data = parts
    cfg = row_config('dp-p8-100', seed=0, **TINY)
    alone = run_row(cfg, 'dp-p8-100', tmp_path / 'alone', gen, data)
    shared = run_row(cfg, 'dp-p8-100', tmp_path / 'shared', gen, data, initial_pool=initial_pool(row_config('static-wsd', seed=0, **TINY), gen, data))
    strip = lambda r: {k: v for k, v in r.items() if k != 'wall_s'}
    assert strip(alone) == strip(shared) and alone['refreshes'] >= 1

def test_worker_processes_give_the_serial_numbers(tmp_path, parts):
    "Two spawned workers, one thread each: the same results as one process with one thread, in the same order; a rerun reads them back."
    rows, kw = ['static-wsd', 'dp-p8-100'], dict(seeds=[0, 1], out=None, progress=False, **TINY)
    with torch_threads(1):
        one = reproduce('digits', rows=rows, **{**kw, 'out': tmp_path / 'one'}, generator=parts[0], data=parts[1])
        two = reproduce('digits', rows=rows, **{**kw, 'out': tmp_path / 'two'}, workers=2)
    strip = lambda rs: [{k: v for k, v in r.items() if k != 'wall_s'} for r in rs]
    assert strip(one) == strip(two) and [(r['row'], r['seed']) for r in two] == [(r, s) for r in rows for s in (0, 1)]
    assert json.loads((tmp_path / 'two' / RESULTS).read_text()) == two and (tmp_path / 'two' / FIGURE).exists()
    assert reproduce('digits', rows=rows, **{**kw, 'out': tmp_path / 'two'}, workers=2) == two        # finished: read back, no worker started

def test_workers_only_at_digits_scale():
    with pytest.raises(ValueError, match='workers must be 1'):
        reproduce('imagenet100', seeds=[0], rows=['static-wsd'], out='/nowhere', workers=2, **IMAGENET)

def _fake(rows_gaps, seeds=range(1, 10)):
    "Results where row r's test accuracy on seed s is 0.9 + gap[s] / 100, with flat histories."
    return [dict(row=r, seed=s, test_acc=0.9 + g(s) / 100, val_acc=0.9, n_generated=100, wall_s=1.0, config={},
                 history=[dict(epoch=1, n_generated=100, val_acc=0.9, test_acc=0.9)]) for r, g in rows_gaps.items() for s in seeds]

@pytest.mark.parametrize('gap, expect', [(lambda s: 1.0 + 0.1 * (s % 3), 'holds'), (lambda s: (-1) ** s * 0.5, 'tie'), (lambda s: -2.0 + 0.1 * (s % 2), 'fails')])
def test_verdicts_of_the_claims(gap, expect):
    res = _fake({'static-cosine': lambda s: 0, 'static-wsd': gap, 'random-p8-100': lambda s: 0, 'dp-p8-100': lambda s: gap(s) + 1})
    c = {d['claim']: d for d in claims(res)}
    assert c['WSD - cosine']['verdict'] == expect and c['WSD - cosine']['n_seeds'] == 9
    assert c['best DP - static WSD']['row'] == 'dp-p8-100' and c['best DP - static WSD']['verdict'] == 'holds'
    g = paired_ci(res, 'static-wsd', 'static-cosine')
    assert g['lo'] <= g['mean'] <= g['hi']
    import numpy as np
    assert g['mean'] == pytest.approx(np.mean([gap(s) for s in range(1, 10)]), abs=1e-9)

def test_image_share_per_seed():
    "DP needs 100 images where random needed 400 on every seed but one, where it never gets there."
    def run(row, seed, vals, gens): return dict(row=row, seed=seed, history=[dict(val_acc=v, n_generated=g) for v, g in zip(vals, gens)])
    res = [run('random-p8-100', s, [.5, .6, .7, .8, .9], [100, 200, 300, 400, 500]) for s in range(9)]
    res += [run('dp-p8-100', s, [.5, .9, .9, .9, .9] if s else [.5, .6, .6, .6, .6], [100, 200, 300, 400, 500]) for s in range(9)]
    e = image_share(res)
    assert e['shares'][0] == float('inf') and e['shares'][1:] == [0.25] * 8
    assert (e['median'], e['lo'], e['hi'], e['verdict']) == (0.25, 0.25, 0.25, 'holds')

def test_real_row_trains_on_the_generators_real_images(tmp_path):
    "The real-data row of the k=10 generator: 100 real gen digits, nothing generated, the static WSD schedule."
    from deliberate_practice.ablation import real_images, scale_rows
    cfg = row_config(REAL_ROW, seed=0, digits_generator='digits_unet_k10', **TINY)
    assert {k: v for k, v in cfg.to_dict().items()} == row_config('static-wsd', seed=0, digits_generator='digits_unet_k10', **TINY).to_dict()
    x, y = real_images(cfg)
    assert len(y) == 100 and torch.bincount(y).tolist() == [10] * 10
    r = reproduce('digits', seeds=[0], rows=[REAL_ROW], out=tmp_path, progress=False, digits_generator='digits_unet_k10', **TINY)[0]
    assert r['row'] == REAL_ROW and r['n_generated'] == 0 and r['refreshes'] == 0 and len(r['history']) == 3
    assert scale_rows('digits', digits_generator='digits_unet_k10')[-1] == REAL_ROW

from contextlib import contextmanager
@contextmanager
def torch_threads(n):
    old = torch.get_num_threads(); torch.set_num_threads(n)
    try: yield
    finally: torch.set_num_threads(old)

def _val_test(rows, seeds=range(1, 10)):
    "Results where row r on seed s has val accuracy val(s) and test accuracy test(s), with flat histories."
    return [dict(row=r, seed=s, val_acc=v(s), test_acc=t(s), n_generated=100, wall_s=1.0, config={},
                 history=[dict(epoch=1, n_generated=100, val_acc=v(s), test_acc=t(s))]) for r, (v, t) in rows.items() for s in seeds]

def test_claims_choose_the_best_dp_row_on_val():
    "dp-p8-100 has the best test accuracy, dp-p8-50 the best val accuracy: both claims that choose a row take dp-p8-50, and count the 2 rows."
    res = _val_test({'static-wsd': (lambda s: .90, lambda s: .90 + .001 * (s % 2)),
                     'random-p8-100': (lambda s: .91, lambda s: .91),
                     'dp-p8-50': (lambda s: .96, lambda s: .93 + .001 * (s % 3)),
                     'dp-p8-100': (lambda s: .94, lambda s: .97 + .001 * (s % 3))})
    c = {d['claim']: d for d in claims(res)}
    assert c['best DP - static WSD']['row'] == 'dp-p8-50' and c['image share']['row'] == 'dp-p8-50'
    assert c['best DP - static WSD']['estimate'] == pytest.approx(paired_ci(res, 'dp-p8-50', 'static-wsd')['mean'])
    assert [(d['n_compared'], d['family']) for d in c.values()] == [(1, 5), (2, 5), (2, 5)]
    assert ablation.best_dp_row(res) == 'dp-p8-50'

def test_holm_by_hand():
    "Three p-values 0.01, 0.04, 0.03: sorted, times 3, 2, 1 = 0.03, 0.06, 0.04; the last raised to 0.06 (step-down: never below the one before)."
    assert ablation.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert ablation.holm([0.02, 0.5, 0.001]) == pytest.approx([0.04, 0.5, 0.003])

def test_claims_adjust_with_holm():
    "Three comparisons (WSD - cosine, DP-100 - random, best DP - static with one DP row): each claim's Holm p is its t-test p adjusted over the three."
    from scipy import stats
    res = _val_test({'static-cosine': (lambda s: .9, lambda s: .90),
                     'static-wsd': (lambda s: .9, lambda s: .90 + .002 * (s % 2)),       # gaps 0 / 0.2 points: weak
                     'random-p8-100': (lambda s: .9, lambda s: .92 + .01 * (s % 3)),
                     'dp-p8-100': (lambda s: .9, lambda s: .93 + .01 * (s % 3) + .003 * (s % 2))})
    cs = [d for d in claims(res) if d['claim'] != 'image share']
    ps = [d['p'] for d in cs]
    gaps = [[100 * (a - b) for a, b in zip(*[[r['test_acc'] for r in res if r['row'] == row] for row in (x, y)])]
            for x, y in (('static-wsd', 'static-cosine'), ('dp-p8-100', 'random-p8-100'), ('dp-p8-100', 'static-wsd'))]
    assert ps == pytest.approx([stats.ttest_1samp(g, 0).pvalue for g in gaps])
    share = next(d for d in claims(res) if d['claim'] == 'image share')       # the fourth comparison of the family
    order = sorted(range(4), key=lambda i: (ps + [share['p']])[i])
    m, adj, run = 4, [0.0] * 4, 0.0
    for j, i in enumerate(order): run = max(run, min(1.0, (m - j) * (ps + [share['p']])[i])); adj[i] = run
    assert [d['p_holm'] for d in cs] == pytest.approx(adj[:3])
    assert all(d['holm_verdict'] in ('holds', 'tie', 'fails') for d in cs)
