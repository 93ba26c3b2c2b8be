"The initial pool as shared data: one per seed in dp-reproduce, made offline by dp-generate workers (killed and taken over), and checked by --initial-pool."
import json, os, re, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from conftest import imagenet_layout

ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg', 'PYTHONUNBUFFERED': '1'}


def test_reproduce_generates_each_seeds_pool_once_and_rows_equal_their_own_pool_runs(tmp_path, capsys):
    "Tiny SD, the ImageNet-100 layout, 2 rows x 1 seed: the initial pool is generated once (the log says so); each row equals a run that generated its own pool."
    from deliberate_practice.data import IMAGENET100_WNIDS
    from deliberate_practice.generators import StableDiffusionGenerator, tiny_sd_components
    from deliberate_practice.ablation import reproduce, run_row, row_config, scale_parts, shared_pool_dir, POOLS
    from deliberate_practice.store import INDEX
    from deliberate_practice.pool import Pool
    torch.set_num_threads(1)
    imagenet_layout(tmp_path / 'in', IMAGENET100_WNIDS)
    StableDiffusionGenerator(**tiny_sd_components(), class_names=['tench']).save_pretrained(tmp_path / 'sd')
    kw = dict(data_root=str(tmp_path / 'in'), sd_path=str(tmp_path / 'sd'), device='cpu', model='test_vit', image_size=16, pool_size=200,
              batch_size=100, device_batch_size=None, epochs=3, patience=1, n_steps=2, mixup=0.0, cutmix=0.0, ema_decay=0.0, decay_frac=0.0, lr=1e-6,
              gen_batch_size=50, guidance_batch_size=50, num_workers=0)
    rows = ['static-wsd', 'dp-p8-100']
    gen, data = scale_parts(row_config(rows[0], 'imagenet100', seed=0, **kw))
    shared = reproduce('imagenet100', seeds=[0], rows=rows, out=tmp_path / 'rep', progress=True, generator=gen, data=data, **kw)
    log = capsys.readouterr().out
    assert log.count('generating its initial pool once') == 1, log
    assert log.count('starts from the shared initial pool') == 2, log
    d = shared_pool_dir(tmp_path / 'rep', row_config(rows[0], 'imagenet100', seed=0, **kw))
    assert (d / INDEX).exists() and [p.name for p in (tmp_path / 'rep' / POOLS).iterdir()] == [d.name]
    for r in rows:                                                  # each row's pool holds links to the shared shards, none of its own initial images
        assert os.stat(tmp_path / 'rep' / 'runs' / f'{r}-s0' / 'pool' / 'shard-00000000.safetensors').st_ino == os.stat(d / 'shard-00000000.safetensors').st_ino \
            or r != 'static-wsd'
    alone = [run_row(row_config(r, 'imagenet100', seed=0, **kw), r, tmp_path / 'alone', gen, data) for r in rows]
    strip = lambda res: {k: v for k, v in res.items() if k != 'wall_s'}
    assert [strip(a) for a in alone] == [strip(s) for s in shared]
    from deliberate_practice.runfolder import read_checkpoint
    for r in rows:                                                  # the same weights and the same pool, image for image: not only the same accuracies
        a, s = (tmp_path / d / 'runs' / f'{r}-s0' for d in ('alone', 'rep'))
        wa, ws = (read_checkpoint(x / 'checkpoint.pt')['model'] for x in (a, s))
        assert all(torch.equal(wa[k], ws[k]) for k in wa)
        pa, ps = Pool.load(a / 'pool'), Pool.load(s / 'pool')
        assert torch.equal(pa.store.get(slice(None)), ps.store.get(slice(None))) and torch.equal(pa.born, ps.born) and torch.equal(pa.seed, ps.seed)
    assert shared[1]['refreshes'] >= 1 and shared[1]['n_generated'] > 200          # the DP row refreshed (its own shards), the shared pool is untouched
    assert Pool.load(d).round == 0 and len(Pool.load(d)) == 200


N_CHUNKS = 7   # worker 0 owns 4 chunks, worker 1 three: the third worker takes chunk 3 over long before worker 0 could steal it

def _worker(out, w, n, log, extra=()):
    args = ['dp-generate', '--out', str(out), '--pool-size', str(N_CHUNKS * 2048), '--n-steps', '2', '--gen-batch-size', '256', '--seed', '3',
            '--worker-id', str(w), '--num-workers', str(n), *extra]
    return subprocess.Popen(args, env={**ENV, 'DP_SAMPLED_LOG': str(log)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _written(text): return [int(m) for m in re.findall(r'shard (\d+) \([\d,]+ images\) written', text)]


def test_dp_generate_workers_at_once_one_killed_a_third_finishes(tmp_path):
    "Two workers at once on one folder; one is killed with kill -9 mid-chunk; a third takes its slot. No shard is written twice, no saved batch is sampled again, and the pool equals one made by a single worker, image for image."
    out, log = tmp_path / 'pool', tmp_path / 'sampled.log'
    a, b = _worker(out, 0, 2, log), _worker(out, 1, 2, log)
    t0 = time.time()
    while time.time() - t0 < 240:                                  # worker 1 is inside its second chunk (3): a batch of it is saved
        if len(list((out / 'scratch').glob('r00000-c00003-*'))) >= 2: break
        time.sleep(0.05)
    b.kill(); b_out = b.communicate()[0]
    assert b.returncode == -signal.SIGKILL, b_out
    c = _worker(out, 1, 2, log)
    a_out, c_out = a.communicate(timeout=300)[0], c.communicate(timeout=300)[0]
    assert a.returncode == 0 and c.returncode == 0, a_out + c_out
    written = _written(a_out) + _written(b_out) + _written(c_out)
    assert sorted(written) == list(range(N_CHUNKS)), (a_out, b_out, c_out)           # every shard written once
    assert 3 in _written(c_out) and 3 not in _written(b_out)                   # the killed worker's chunk, finished by the third
    sampled = sum(int(x) for x in log.read_text().split())
    # batches saved before the kill were loaded, not sampled again: at most the batch in flight
    # (sampled, not yet saved) when kill -9 came is sampled twice; resampling saved ones adds >= 512
    assert N_CHUNKS * 2048 <= sampled <= N_CHUNKS * 2048 + 256, sampled
    assert 'the pool is whole' in a_out + c_out
    from deliberate_practice.pool import Pool
    from deliberate_practice.config import preset, initial_sampling
    from deliberate_practice.runfolder import derive_seed
    from deliberate_practice.trainer import POOL
    from deliberate_practice.data import balanced_labels
    from deliberate_practice.generators import load_digits_generator
    torch.set_num_threads(1)
    cfg = preset('digits', pool_size=N_CHUNKS * 2048, n_steps=2, gen_batch_size=256, seed=3)
    ref = Pool.generate(load_digits_generator(), balanced_labels(cfg.pool_size, 10), initial_sampling(cfg), derive_seed(cfg.seed, POOL), root=tmp_path / 'ref')
    got = Pool.load(out)
    assert torch.equal(got.store.get(slice(None)), ref.store.get(slice(None))) and torch.equal(got.labels, ref.labels)
    assert torch.equal(got.seed, ref.seed) and torch.equal(got.index, ref.index)
    assert not (out / 'scratch').exists()


@pytest.fixture(scope='module')
def small_pool(tmp_path_factory):
    "A digits pool of 40 images made by dp-generate."
    out = tmp_path_factory.mktemp('gen') / 'pool'
    r = subprocess.run(['dp-generate', '--out', out, '--pool-size', '40', '--n-steps', '2', '--quiet'], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


def _train(argv):
    r = subprocess.run(['dp-train', *map(str, argv)], env=ENV, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


def test_dp_train_initial_pool_refuses_another_size_or_generator(small_pool, tmp_path):
    base = ['--initial-pool', small_pool, '--n-steps', '2', '--epochs', '1', '--quiet']
    code, _, err = _train(['--out', tmp_path / 'a', '--pool-size', '60', *base])
    assert code == 2 and err.strip().splitlines() == [f"dp-train: error: initial_pool {small_pool} does not fit this run: its pool_size is 40, this run's is 60"]
    code, _, err = _train(['--out', tmp_path / 'b', '--pool-size', '40', '--digits-generator', 'digits_unet_k10', *base])
    assert code == 2 and len(err.strip().splitlines()) == 1 and 'does not fit this run: it was made by another generator: DigitsGenerator of' in err, err
    code, _, err = _train(['--out', tmp_path / 'c', '--pool-size', '40', '--cfg-scale-init', '3', *base])
    assert code == 2 and err.strip().endswith("it was sampled with cfg_scale=2.0, this run samples with cfg_scale=3.0"), err
    code, out, err = _train(['--out', tmp_path / 'd', '--pool-size', '40', *base])
    assert code == 0, err
    fin = json.loads((tmp_path / 'd' / 'final.json').read_text())
    assert fin['n_generated'] == 40 and fin['config']['initial_pool'] == str(small_pool)


def test_initial_pool_refuses_other_classes(small_pool, tmp_path):
    from deliberate_practice.trainer import DPTrainer
    from deliberate_practice.config import preset
    from deliberate_practice.generators import load_digits_generator
    g = load_digits_generator(); g.class_names = list('abcdefghij')
    t = DPTrainer(preset('digits', pool_size=40, n_steps=2, epochs=1, initial_pool=str(small_pool)), generator=g)
    with pytest.raises(ValueError, match=r"does not fit this run: its classes differ from this run's: class 0 is '0' there, 'a' here$"):
        t.build_pool()


def test_dp_generate_under_accelerate_launch(tmp_path):
    "The same command under accelerate launch (2 gloo processes): each process is a worker and takes its chunk; the pool is the single worker's."
    import shutil
    from test_distributed import LAUNCH
    flags = ['--pool-size', str(2 * 2048), '--n-steps', '2', '--gen-batch-size', '512', '--seed', '4']
    r = subprocess.run([*LAUNCH, '--no_python', 'dp-generate', '--out', str(tmp_path / 'two'), *flags], env=ENV, capture_output=True, text=True, timeout=300)
    if r.returncode and ('deliberate_practice' not in r.stderr + r.stdout or shutil.which('accelerate') is None):
        pytest.skip(f"accelerate launch could not start 2 processes here: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(re.findall(r'worker (\d): shard (\d) \(', r.stdout)) == [('0', '0'), ('1', '1')], r.stdout      # worker k of 2 made chunk k
    one = subprocess.run(['dp-generate', '--out', str(tmp_path / 'one'), *flags, '--quiet'], env=ENV, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    from deliberate_practice.pool import Pool
    a, b = Pool.load(tmp_path / 'one'), Pool.load(tmp_path / 'two')
    assert torch.equal(a.store.get(slice(None)), b.store.get(slice(None))) and a.spec == b.spec


def _spec_worker(root, spec, barrier, q):
    from deliberate_practice.pool import _check_spec
    barrier.wait()
    try: _check_spec(root, spec); q.put('ok')
    except Exception as e: q.put(f'{type(e).__name__}: {e}')


def test_workers_starting_at_once_agree_on_the_spec(tmp_path):
    "16 workers write spec.json at the same moment: all succeed, one file, whole (before: a worker's atomic_write could delete another's temp file)."
    import multiprocessing as mp
    from deliberate_practice.pool import _check_spec                      # imported before the fork: the workers start at once
    ctx = mp.get_context('fork')
    spec = dict(generator=dict(family='X'), classes=['a'], prompts=None, image_shape=[1, 2, 2], pool_size=4, seed=1, sampling=dict(cfg_scale=2.0))
    for trial in range(5):
        root = tmp_path / f't{trial}'; root.mkdir()
        barrier, q = ctx.Barrier(16), ctx.Queue()
        ps = [ctx.Process(target=_spec_worker, args=(root, spec, barrier, q)) for _ in range(16)]
        for p in ps: p.start()
        got = [q.get(timeout=60) for _ in ps]
        for p in ps: p.join()
        assert got == ['ok'] * 16, got
        assert json.loads((root / 'spec.json').read_text()) == spec and [p.name for p in root.iterdir()] == ['spec.json']
