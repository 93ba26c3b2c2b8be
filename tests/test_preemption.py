"""The preemption suite: `dp-train` killed (kill -9, or SIGTERM as SLURM sends it) at every stage of a run, then the same command with
`--resume`, compared with the uninterrupted run: same history (but wall time), same final result, same weights, same pool.
Two runs: the digits (pool in memory) and a folder dataset with a tiny Stable Diffusion (pool on disk, in shards).
Commands run as fresh processes forked from a fork server that has imported dp-train (the reference runs and the
SIGTERM from outside run the console script itself). Faults are injected with `runfolder.fault_point` (`DP_FAULT=name:n:SIGNAL`); images sampled are counted with `DP_SAMPLED_LOG`.
The tally (stages tried, identical resumes, images sampled twice) is printed at the end of pytest's output (conftest.py)."""
import json, os, queue, shutil, signal, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import pytest, torch
from conftest import imagenet_layout, PREEMPTION

PREEMPTED_EXIT = 75
ENV = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', MPLBACKEND='Agg')
DIGITS = ['--pool-size', '40', '--gen-batch-size', '8', '--n-steps', '2', '--epochs', '5', '--patience', '1', '--batch-size', '10',
          '--prune-frac', '0.5', '--quiet']
INITIAL_BATCHES = {'digits': 5, 'folder': 6}        # generation batches of the initial pool: 40 / 8 and 12 / 2

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "The two runs' arguments, and their uninterrupted results."
    from deliberate_practice.generators import StableDiffusionGenerator, tiny_sd_components
    root = tmp_path_factory.mktemp('preempt')
    for split in ('val', 'test'): imagenet_layout(root / 'birds', ['blue_jay', 'owl', 'red_kite'], n=2, splits=(split,))
    StableDiffusionGenerator(**tiny_sd_components(), class_names=['tench']).save_pretrained(root / 'sd')
    folder = ['--dataset', 'folder', '--data-root', str(root / 'birds'), '--sd-path', str(root / 'sd'), '--device', 'cpu', '--mixed-precision', 'no',
              '--model', 'test_vit', '--image-size', '16', '--pool-size', '12', '--gen-batch-size', '2', '--batch-size', '4', '--epochs', '4',
              '--patience', '1', '--prune-frac', '0.5', '--n-steps', '2', '--num-workers', '0', '--quiet']
    args = dict(digits=DIGITS, folder=folder)
    with ThreadPoolExecutor(2) as ex: refs = dict(zip(args, ex.map(lambda k: _run(root / f'ref-{k}', args[k], log=root / f'ref-{k}.log'), args)))
    for k, r in refs.items(): assert r.returncode == 0, r.stderr[-2000:]
    out = {k: dict(args=args[k], ref=root / f'ref-{k}', sampled=_sampled(root / f'ref-{k}.log')) for k in args}
    for k in args: assert _final(out[k]['ref'])['refreshes'] >= 1, f"the {k} run makes no refresh: the refresh stages would test nothing"
    return out

class Result:
    "What a finished command left: its exit status (negative: the signal that killed it), stdout and stderr."
    def __init__(self, returncode, stdout, stderr): self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

class ForkServer:
    "Commands run as fresh processes forked from one that has imported dp-train (tests/fork_server.py): seconds of imports saved per command."
    def __init__(self, tmp:Path):
        self.tmp, self.n = tmp, 0
        self.p = subprocess.Popen([sys.executable, str(Path(__file__).parent / 'fork_server.py')], env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    def run(self, argv:list, env:dict)->Result:
        self.n += 1; o, e = self.tmp / f'{self.n}.out', self.tmp / f'{self.n}.err'
        self.p.stdin.write(json.dumps(dict(argv=[str(a) for a in argv], env=env, stdout=str(o), stderr=str(e))) + '\n'); self.p.stdin.flush()
        status = json.loads(self.p.stdout.readline())['status']
        return Result(status, o.read_text(), e.read_text())
    def close(self): self.p.stdin.close(); self.p.wait(timeout=60)

@pytest.fixture(scope='module')
def servers(tmp_path_factory):
    "Two fork servers, one per core."
    s = [ForkServer(tmp_path_factory.mktemp(f'server{i}')) for i in range(2)]
    yield s
    for x in s: x.close()

def _env(fault=None, log=None)->dict: return {**({'DP_FAULT': fault} if fault else {}), **({'DP_SAMPLED_LOG': str(log)} if log else {})}

def _run(out, args, fault=None, resume=False, log=None, server=None):
    "`dp-train --out OUT ARGS [--resume]`: through a fork server, or as its own process (the console script itself)."
    argv, env = ['--out', str(out), *args, *(['--resume'] if resume else [])], _env(fault, log)
    if server is not None: return server.run(argv, env)
    r = subprocess.run(['dp-train', *argv], env=dict(ENV, **env), capture_output=True, text=True, timeout=300)
    return Result(r.returncode, r.stdout, r.stderr)

def _sampled(log:Path)->int: return sum(int(l) for l in log.read_text().split()) if log.exists() else 0
def _final(d): return json.loads((d / 'final.json').read_text())
def _history(d): return [{k: v for k, v in json.loads(l).items() if k != 'wall_s'} for l in (d / 'history.jsonl').read_text().splitlines()]

def _same_run(a:Path, b:Path)->list:
    "What differs between two finished runs: history (but wall time), final.json, weights (and EMA), pool images and labels."
    diff, ca, cb = [], torch.load(a / 'checkpoint.pt', weights_only=True), torch.load(b / 'checkpoint.pt', weights_only=True)
    if _history(a) != _history(b): diff.append('history')
    if _final(a) != _final(b): diff.append('final.json')
    for part in ('model', 'ema', 'opt'):
        flat = lambda sd: [t for t in torch.utils._pytree.tree_leaves(sd) if isinstance(t, torch.Tensor)]
        if any(not torch.equal(x, y) for x, y in zip(flat(ca[part]), flat(cb[part]))): diff.append(part)
    from deliberate_practice.pool import Pool
    pa, pb = [Pool.load(d / 'pool') if (d / 'pool').exists() else Pool.from_state_dict(c['pool']) for d, c in ((a, ca), (b, cb))]
    if not (torch.equal(pa.labels, pb.labels) and torch.equal(pa.get_images(slice(None)), pb.get_images(slice(None)))): diff.append('pool')
    return diff

# (stage, fault point, its call number: a function of the run)
STAGES = [('imports', 'start', lambda k: 1),
          ('initial pool', 'generate', lambda k: INITIAL_BATCHES[k] - 1),      # the last batch but one: most of the pool is done
          ('first epoch', 'batch', lambda k: 2),
          ('checkpoint write', 'checkpoint', lambda k: 2),
          ('scoring', 'score', lambda k: 1),
          ('refresh generation', 'generate', lambda k: INITIAL_BATCHES[k] + 2),
          ('final evaluation', 'evaluate', lambda k: 4 if k == 'folder' else 5),
          ('export', 'export', lambda k: 1)]
SIGTERM_STAGES = ('initial pool', 'first epoch', 'refresh generation', 'final evaluation')
CASES = [(k, s, sig) for k in ('digits', 'folder') for s, *_ in STAGES for sig in ('KILL', 'TERM') if sig == 'KILL' or s in SIGTERM_STAGES]

@pytest.fixture(scope='module')
def outcomes(runs, servers, tmp_path_factory):
    "Every case run once, two at a time: {case: (killed run, resumed run, folder, images sampled by both)}."
    root = tmp_path_factory.mktemp('cases')
    free = queue.Queue(); [free.put(x) for x in servers]              # a server serves one case at a time
    def case(c):
        server = free.get()
        try: return _case(c, server)
        finally: free.put(server)
    def _case(c, server):
        k, stage, sig = c
        point, n = next((p, f(k)) for s, p, f in STAGES if s == stage)
        d, log = root / f"{k}-{stage.replace(' ', '_')}-{sig}", root / f"{k}-{stage.replace(' ', '_')}-{sig}.log"
        killed = _run(d, runs[k]['args'], fault=f'{point}:{n}:{sig}', log=log, server=server)
        resumed = _run(d, runs[k]['args'], resume=True, log=log, server=server)
        return c, (killed, resumed, d, _sampled(log))
    with ThreadPoolExecutor(len(servers)) as ex: return dict(ex.map(case, CASES))

@pytest.mark.parametrize('case', CASES, ids=['-'.join(c).replace(' ', '_') for c in CASES])
def test_killed_then_resumed_equals_uninterrupted(case, runs, outcomes):
    k, stage, sig = case
    killed, resumed, d, sampled = outcomes[case]
    expect = -signal.SIGKILL if sig == 'KILL' else PREEMPTED_EXIT
    if stage in ('final evaluation', 'export') and sig == 'TERM': expect = 0     # the signal came after the last epoch: the run finishes
    redone = sampled - runs[k]['sampled']
    diff = _same_run(runs[k]['ref'], d) if resumed.returncode == 0 and (d / 'final.json').exists() else ['no result']
    PREEMPTION.append(dict(run=k, stage=stage, signal=sig, identical=not diff and killed.returncode == expect, redone=redone))
    assert killed.returncode == expect, (killed.returncode, killed.stderr[-2000:])
    if expect == PREEMPTED_EXIT: assert f'exiting with status {PREEMPTED_EXIT}: run the same command with --resume' in killed.stderr, killed.stderr[-1000:]
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert diff == [], diff
    batch = {'digits': 8, 'folder': 2}[k]
    assert 0 <= redone <= batch, f"{redone} images sampled twice; at most the batch in flight ({batch}) may be"

def test_resume_on_an_empty_folder_starts_the_run(runs, servers, tmp_path):
    "A requeued job's command line holds --resume from the first try: on a folder that holds no run, it starts it, and says so."
    r = _run(tmp_path / 'new', runs['digits']['args'], resume=True, server=servers[0])
    assert r.returncode == 0, r.stderr
    assert f"dp-train: --resume: {tmp_path / 'new'} holds no run yet (no run.json, no checkpoint.pt): starting it" in r.stdout
    assert _same_run(runs['digits']['ref'], tmp_path / 'new') == []

def test_bare_resume_reads_the_run_and_refuses_another_preset(runs, servers, tmp_path):
    "`dp-train --out X --resume` alone continues the run with its own flags; a preset other than the run's is refused, not ignored."
    d = tmp_path / 'run'
    assert _run(d, runs['digits']['args'], fault='batch:3:KILL', server=servers[0]).returncode == -signal.SIGKILL
    r = _run(d, ['--preset', 'imagenet100', '--quiet'], resume=True, server=servers[0])
    assert r.returncode == 2 and "dataset is 'digits' in the run, got 'imagenet100' (preset imagenet100)" in r.stderr, r.stderr
    r = _run(d, [], resume=True, server=servers[0])
    assert r.returncode == 0, r.stderr
    assert _same_run(runs['digits']['ref'], d) == []

def test_sigterm_from_outside_during_training(runs, servers, tmp_path):
    "SIGTERM sent from outside while the folder run trains: exit 75 within 60 s with a checkpoint; --resume then equals the uninterrupted run."
    d, args = tmp_path / 'run', runs['folder']['args']
    p = subprocess.Popen(['dp-train', '--out', str(d), *args, '--checkpoint-every', '0.0001'], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (d / 'checkpoint.pt').exists() and p.poll() is None and time.monotonic() - t0 < 120: time.sleep(0.05)
    p.send_signal(signal.SIGTERM); t_sig = time.monotonic()
    _, err = p.communicate(timeout=120)
    took = time.monotonic() - t_sig
    if p.returncode == 0: pytest.skip('the run finished before the signal')           # (a very fast machine)
    assert p.returncode == PREEMPTED_EXIT and took < 60, (p.returncode, took, err[-1000:])
    assert 'stopped on SIGTERM' in err
    r = _run(d, args, resume=True, server=servers[1])
    assert r.returncode == 0, r.stderr
    assert _same_run(runs['folder']['ref'], d) == []

def test_two_processes_stop_together(tmp_path):
    "Under accelerate launch (2 gloo processes), SIGTERM reaches rank 1 only, mid-epoch: both ranks stop after the same batch (the stop flag is all-reduced) and exit 75; --resume under accelerate launch then equals the uninterrupted 2-process run."
    from test_distributed import LAUNCH
    launch = lambda d, *extra, env={}: subprocess.run([*LAUNCH, '--no_python', 'dp-train', '--out', str(d), *DIGITS, *extra], env=dict(ENV, **env),
                                                      capture_output=True, text=True, timeout=300)
    ref = launch(tmp_path / 'ref')
    if ref.returncode and ('deliberate_practice' not in ref.stderr or shutil.which('accelerate') is None):
        pytest.skip(f"accelerate launch could not start 2 processes here: {ref.stderr[-300:]}")
    assert ref.returncode == 0, ref.stderr[-2000:]
    d = tmp_path / 'run'
    killed = launch(d, env={'DP_FAULT': 'batch:2:TERM:1'})
    assert killed.returncode != 0 and killed.stderr.count('exiting with status 75') == 2, killed.stderr[-3000:]   # both ranks, the same way
    ck = torch.load(d / 'checkpoint.pt', weights_only=True)
    assert (ck['epoch'], ck['at']['kind'], ck['at']['batch']) == (0, 'train', 2)
    resumed = launch(d, '--resume')
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _same_run(tmp_path / 'ref', d) == []
