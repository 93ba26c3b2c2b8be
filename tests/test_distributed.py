"Multi-process runs: `dp-train` and the sharded pool under `accelerate launch` with 2 CPU processes (gloo), against one process; resumable generation."
import json, os, shutil, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch
from deliberate_practice.config import Sampling
from deliberate_practice.pool import Pool
from deliberate_practice.cli import dp_train

ENV = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')   # tiny models: one thread per process
# CPU processes: `--multi_gpu` makes accelerate start torchrun; the trainer asks for a CPU `PartialState` (gloo) because --device is cpu.
# `--no_python` runs the console script as it is (a pyenv shim is a bash script, not a python file).
LAUNCH = ['accelerate', 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1', '--mixed_precision', 'no',
          '--dynamo_backend', 'no', '--main_process_port', '0']
FLAGS = ['--pool-size', '60', '--n-steps', '4', '--epochs', '8', '--patience', '1', '--batch-size', '16', '--quiet']

pytestmark = pytest.mark.usefixtures('one_thread')   # conftest: one torch thread for this module

POOL_SCRIPT = textwrap.dedent('''
    import sys, torch
    from accelerate import PartialState
    from deliberate_practice.config import Sampling
    from deliberate_practice.pool import Pool
    from deliberate_practice.generators import load_digits_generator
    torch.set_num_threads(1)
    s, out = PartialState(cpu=True), sys.argv[1]
    p = Pool.generate(load_digits_generator(), torch.arange(23) % 10, Sampling(n_steps=4), seed=5, dist=s, scratch=out + '/scratch')
    if s.is_main_process: p.save(out + '/pool0.safetensors')
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)); torch.nn.init.normal_(clf[1].weight, generator=torch.Generator().manual_seed(0)); torch.nn.init.zeros_(clf[1].bias)
    r = p.refresh(load_digits_generator(), clf, 0.5, Sampling(omega=0.1, n_steps=4), seed=7, dist=s, scratch=out + '/scratch')
    if s.is_main_process: p.save(out + '/pool1.safetensors'); print('world', s.num_processes, 'pruned', r['pruned_indices'].tolist(), flush=True)
''')

def _launch(args, **kw):
    r = subprocess.run([*LAUNCH, *args], env=ENV, capture_output=True, text=True, timeout=300, **kw)
    return r

def test_sharded_pool_equals_one_process(tmp_path):
    "Generation and a refresh sharded over 2 processes give the 1-process pool: same labels, pruned set and counters, images equal up to float."
    (tmp_path / 'pool.py').write_text(POOL_SCRIPT)
    r = _launch([str(tmp_path / 'pool.py'), str(tmp_path)])
    if 'world 2' not in r.stdout:
        if shutil.which('accelerate') is None or 'Traceback' not in r.stderr or 'deliberate_practice' not in r.stderr:
            pytest.skip(f"accelerate launch could not start 2 processes here: {r.stderr[-300:]}")
        pytest.fail(r.stderr[-3000:])
    from deliberate_practice.generators import load_digits_generator
    g = load_digits_generator()
    ref = Pool.generate(g, torch.arange(23) % 10, Sampling(n_steps=4), seed=5)
    two = Pool.load(tmp_path / 'pool0.safetensors')
    torch.testing.assert_close(two.get_images(slice(None)), ref.get_images(slice(None)), atol=1e-4, rtol=0)
    assert two.labels.tolist() == ref.labels.tolist() and two.n_generated == ref.n_generated == 23
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)); torch.nn.init.normal_(clf[1].weight, generator=torch.Generator().manual_seed(0)); torch.nn.init.zeros_(clf[1].bias)
    rr = ref.refresh(g, clf, 0.5, Sampling(omega=0.1, n_steps=4), seed=7)
    two = Pool.load(tmp_path / 'pool1.safetensors')
    assert f"pruned {rr['pruned_indices'].tolist()}" in r.stdout               # sharded scores, gathered: the same 12 images pruned
    torch.testing.assert_close(two.get_images(slice(None)), ref.get_images(slice(None)), atol=1e-3, rtol=0)
    torch.testing.assert_close(two.entropy_at_birth, ref.entropy_at_birth, atol=1e-4, rtol=0, equal_nan=True)
    assert (two.n_generated, two.round, two.class_counts(10)) == (ref.n_generated, ref.round, ref.class_counts(10))
    assert not (tmp_path / 'scratch').exists()                                # slices are cleared once their round is committed

def test_dp_train_two_processes_matches_one(tmp_path):
    r = _launch(['--no_python', 'dp-train', '--out', str(tmp_path / 'two'), *FLAGS])
    if r.returncode and ('deliberate_practice' not in r.stderr or shutil.which('accelerate') is None):
        pytest.skip(f"accelerate launch could not start 2 processes here: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    dp_train(['--out', str(tmp_path / 'one'), *FLAGS])
    one, two = (json.loads((tmp_path / d / 'final.json').read_text()) for d in ('one', 'two'))
    assert (one['world_size'], two['world_size']) == (1, 2)
    for k in ('pool_size', 'pool_class_counts', 'epochs', 'config'): assert one[k] == two[k], k
    # refreshes follow the real-val trajectory, which differs a little (data-parallel BatchNorm and sums): n_generated is the 1-process
    # value for the same number of refreshes (the sharded refresh itself is compared image by image in the test above)
    for f in (one, two): assert f['pool_class_counts'] == [6] * 10 and f['n_generated'] == 60 * (1 + f['refreshes'])
    if one['refreshes'] == two['refreshes']: assert one['n_generated'] == two['n_generated']
    assert abs(one['test_acc'] - two['test_acc']) <= 0.1, (one['test_acc'], two['test_acc'])
    assert sorted(p.name for p in (tmp_path / 'two').iterdir() if not p.name.startswith('.')) == ['checkpoint.pt', 'curves.png', 'final.json', 'history.csv', 'history.jsonl', 'model', 'pruned', 'run.json']
    rows = (tmp_path / 'two' / 'history.csv').read_text().splitlines()
    assert rows[0].split(',') == list(json.loads((tmp_path / 'two' / 'history.jsonl').read_text().splitlines()[0])) and len(rows) == 9

class Flaky:
    "A stand-in generator (per-call seeded noise) that can fail on its k-th call: an interrupted generation."
    n_classes, class_names, image_shape = 10, [str(i) for i in range(10)], (1, 8, 8)
    def __init__(self, fail_at=None): self.calls, self.fail_at = 0, fail_at
    def sample(self, labels, sampling=Sampling(), classifier=None, seed=0, progress=False, return_stats=False):
        self.calls += 1
        if self.calls == self.fail_at: raise RuntimeError('killed')
        x = torch.rand(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(seed))
        return (x, type('S', (), dict(n_nonfinite=0))) if return_stats else x

def test_interrupted_generation_resumes_from_scratch(tmp_path):
    labels, sc = torch.arange(40) % 10, tmp_path / 'scratch'
    ref = Pool.generate(Flaky(), labels, Sampling(), seed=3, shard_size=8)                     # 5 chunks
    with pytest.raises(RuntimeError, match='killed'): Pool.generate(Flaky(fail_at=4), labels, Sampling(), seed=3, shard_size=8, scratch=sc)
    assert len(list(sc.iterdir())) == 3                                            # chunks 0-2 finished
    g = Flaky()
    p = Pool.generate(g, labels, Sampling(), seed=3, shard_size=8, scratch=sc)
    assert g.calls == 2                                                            # only chunks 3 and 4 generated again
    assert torch.equal(p.get_images(slice(None)), ref.get_images(slice(None))) and not sc.exists()

def test_dp_reproduce_two_processes_writes_once(tmp_path):
    "dp-reproduce under accelerate launch: both processes run every row, only the main one prints and writes; results match one process."
    rows = ['static-wsd', 'dp-p8-100']
    r = _launch(['--no_python', 'dp-reproduce', '--quick', '--rows', *rows, '--threads', '1', '--out', str(tmp_path / 'two')])
    if r.returncode and ('deliberate_practice' not in r.stderr or shutil.which('accelerate') is None):
        pytest.skip(f"accelerate launch could not start 2 processes here: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    for row in rows: assert r.stdout.count(f'{row} seed 1:') == 1, r.stdout            # one process reports each row
    assert r.stdout.count('2 runs in') == 1
    from deliberate_practice.ablation import reproduce, run_dir
    one = reproduce('digits', seeds=[1], rows=rows, out=tmp_path / 'one', quick=True, progress=False)
    two = json.loads((tmp_path / 'two' / 'results.json').read_text())
    assert [(x['row'], x['seed']) for x in two] == [(x['row'], x['seed']) for x in one]
    for a, b in zip(one, two):
        assert a['config'] == b['config']
        if a['refreshes'] == b['refreshes']: assert a['n_generated'] == b['n_generated']
        assert abs(a['test_acc'] - b['test_acc']) <= 0.1, (a['row'], a['test_acc'], b['test_acc'])   # data-parallel rounding only
        assert json.loads((run_dir(tmp_path / 'two', a['row'], 1) / 'result.json').read_text()) == b
    assert two[0]['n_generated'] == 100 and two[1]['refreshes'] >= 1
    left = [p.name for p in (tmp_path / 'two').rglob('*') if '.tmp' in p.name]
    assert not left, left                                                                  # no temp file from a second writer

STEP_SETUP = textwrap.dedent('''
    import torch
    from deliberate_practice.config import DPConfig
    from deliberate_practice.pool import Pool
    from deliberate_practice.trainer import DPTrainer
    def first_update(cfg):
        "A trainer of `cfg` with a BatchNorm-free classifier and a fixed pool of 16 random images, before its first epoch."
        clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        torch.nn.init.normal_(clf[1].weight, std=0.3, generator=torch.Generator().manual_seed(0)); torch.nn.init.zeros_(clf[1].bias)
        tr = DPTrainer(cfg, classifier=clf)
        tr.pool = Pool(torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 10)
        return tr
''')
STEP_SCRIPT = STEP_SETUP + textwrap.dedent('''
    import sys
    torch.set_num_threads(1)
    tr = first_update(DPConfig(**eval(sys.argv[2])))
    tr.train_epoch()
    if tr.is_main: torch.save({**{k: v.detach() for k, v in tr.model.state_dict().items()},
                               **{'grad.' + k: p.grad for k, p in tr.model.named_parameters()}}, sys.argv[1])
    print('world', tr.world, 'accumulation', tr.accum_steps, flush=True)
''')

def test_first_update_same_on_one_and_two_processes(tmp_path):
    "The global batch is one setting: 2 processes x (2 passes of 4), and 1 process in one pass of 16 or 4 passes of 4, make the same first update."
    ns = {}; exec(STEP_SETUP, ns)
    kw = dict(pool_size=16, batch_size=16, epochs=4, pool_augment='crop_flip', lr=0.05)   # one epoch = one step of 16 images
    (tmp_path / 'step.py').write_text(STEP_SCRIPT)
    r = _launch([str(tmp_path / 'step.py'), str(tmp_path / 'two.pt'), repr({**kw, 'device_batch_size': 3})])   # 8 a process: 3 + 3 + 2
    if 'world 2' not in r.stdout:
        if shutil.which('accelerate') is None or 'deliberate_practice' not in r.stderr: pytest.skip(f"accelerate launch could not start 2 processes here: {r.stderr[-300:]}")
        pytest.fail(r.stderr[-3000:])
    assert 'world 2 accumulation 3' in r.stdout
    ones = {}
    for dbs in (None, 5):                                                          # 16 in one pass, or 5 + 5 + 5 + 1
        tr = ns['first_update'](ns['DPConfig'](**kw, device_batch_size=dbs))
        before = {k: v.clone() for k, v in tr.model.state_dict().items()}
        tr.train_epoch()
        assert tr.accum_steps == (1 if dbs is None else 4)
        ones[dbs] = {**tr.model.state_dict(), **{'grad.' + k: p.grad for k, p in tr.model.named_parameters()}}
    two = torch.load(tmp_path / 'two.pt')
    moved = max((ones[None][k] - before[k]).abs().max().item() for k in before)
    assert moved > 1e-3                                                            # the step did move the weights
    for k in ones[None]:                                                           # the weights after the step, and its gradient
        torch.testing.assert_close(ones[5][k], ones[None][k], atol=1e-6, rtol=1e-5)   # accumulation = one pass
        torch.testing.assert_close(two[k], ones[None][k], atol=1e-6, rtol=1e-5)       # 2 processes = 1 process
