"dp-train as users run it: kill -9 then --resume == an uninterrupted run, --resume checks, the ImageNet preset end to end (bad inputs: test_bad_inputs.py)."
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from deliberate_practice.cli import dp_train
from conftest import imagenet_layout

pytestmark = pytest.mark.usefixtures('one_thread')   # conftest: one torch thread for this module

def _run(argv):
    try: dp_train(argv)
    except SystemExit as e: return e.code
    return 0

ENV = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')   # tiny models: one thread (see conftest.one_thread)
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
    assert sorted(f.name for f in killed.iterdir() if f.name != '.lock') == ['checkpoint.pt', 'curves.png', 'final.json', 'history.csv', 'history.jsonl', 'model', 'pruned', 'run.json']   # no temp or half-written file
    from safetensors.torch import load_file
    arch = lambda d: {f.name: load_file(str(f)) if f.suffix == '.safetensors' else f.read_text() for f in sorted((d / 'pruned').iterdir())}
    a, b = arch(killed), arch(ref)                                                 # each refresh's pruned images and class entropies: as if never killed
    assert a.keys() == b.keys() and len(b) >= 2
    for k in a: assert a[k] == b[k] if isinstance(a[k], str) else torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True) is None

def test_resume_refuses_changed_config(tmp_path, capsys):
    dp_train(['--out', str(tmp_path), '--pool-size', '20', '--n-steps', '2', '--epochs', '1', '--quiet'])
    assert _run(['--out', str(tmp_path), '--resume', '--epochs', '2']) == 2
    assert 'epochs is 1 in the run, got 2' in capsys.readouterr().err
    assert _run(['--out', str(tmp_path), '--epochs', '1']) == 2       # a fresh run into a used folder
    assert 'already holds a run (checkpoint.pt, history.jsonl, history.csv, final.json, model, run.json): pass --resume' in capsys.readouterr().err

def test_imagenet100_preset_end_to_end(tmp_path):
    "dp-train --preset imagenet100 (the paper's recipe: ViT, bf16, Mixup/CutMix, EMA, test only at the end) on a tiny ImageNet-100 layout and tiny SD."
    from deliberate_practice.data import IMAGENET100_WNIDS
    from deliberate_practice.generators import StableDiffusionGenerator, tiny_sd_components
    imagenet_layout(tmp_path / 'in', IMAGENET100_WNIDS)
    StableDiffusionGenerator(**tiny_sd_components(), class_names=['tench']).save_pretrained(tmp_path / 'sd')
    out = tmp_path / 'run'
    r = subprocess.run(['dp-train', '--preset', 'imagenet100', '--data-root', str(tmp_path / 'in'), '--sd-path', str(tmp_path / 'sd'), '--out', str(out),
                        '--device', 'cpu', '--model', 'test_vit', '--image-size', '32', '--pool-size', '100', '--batch-size', '50', '--epochs', '3',
                        '--n-steps', '2', '--patience', '1', '--gen-batch-size', '50', '--guidance-batch-size', '25', '--num-workers', '2'],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    fin = json.loads((out / 'final.json').read_text())
    c = fin['config']
    from deliberate_practice.config import PRESETS
    assert (c['dataset'], c['pool_size']) == ('imagenet100', 100)
    assert all(c[k] == PRESETS['imagenet100'][k] for k in ('mixed_precision', 'mixup', 'ema_decay', 'test_every', 'lr'))   # the preset, read from PRESETS
    hist = [json.loads(l) for l in (out / 'history.jsonl').read_text().splitlines()]
    assert [h['test_acc'] is None for h in hist] == [True, True, False]          # the real test split (ImageNet train/) only at the end
    assert fin['test_acc'] == hist[-1]['test_acc'] and 0 <= fin['test_acc'] <= 1
    assert fin['pool_class_counts'] == [1] * 100                                  # every class its image
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

SMALL = ['--pool-size', '200', '--patience', '2', '--epochs', '10', '--prune-frac', '0.5', '--batch-size', '100', '--mixup', '0', '--cutmix', '0']

def test_dry_run_plan(imagenet_root, tmp_path):
    "On a complete folder and tiny SD components, the plan's counts are the ones worked out by hand in 10_cli (3 refreshes of 10: 50 images, 20 steps); nothing is written."
    code, out, err = _dry(['--preset', 'imagenet100', '--data-root', imagenet_root / 'in', '--sd-path', imagenet_root / 'sd', '--device', 'cpu',
                           '--out', tmp_path / 'run', *SMALL])
    assert code == 0, err
    plan = json.loads(out.strip().splitlines()[-1])
    assert (plan['max_images'], plan['max_guided_images'], plan['max_refreshes'], plan['optimizer_steps']) == (500, 300, 3, 20)
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
    from deliberate_practice.config import PRESETS
    b, d = PRESETS['imagenet100']['batch_size'], PRESETS['imagenet100']['device_batch_size']
    assert code == 1 and f'lower device_batch_size (now {d} per pass; gradient accumulation keeps the global batch_size {b})' in err, err
    code, out, err = _dry([*base, '--device-batch-size', '2', '--gen-batch-size', '2', '--guidance-batch-size', '1', '--memory-limit', '3'])
    assert code == 0, err


IN100 = lambda root, out: ['--preset', 'imagenet100', '--data-root', root / 'in', '--sd-path', root / 'sd', '--device', 'cpu', '--out', out, *SMALL]

def test_dry_run_prompts_and_gpu_hours(imagenet_root, tmp_path):
    "The plan holds every class folder's prompt (the disambiguated name: n03947888 is the pirate ship) and the GPU-hours of its images, printed on one line."
    from deliberate_practice.config import DPConfig, PRESETS
    from deliberate_practice.cli import ASSUMED_MFU, GPU_PEAK_TFLOPS, generation_cost
    code, out, err = _dry(IN100(imagenet_root, tmp_path / 'run'))
    assert code == 0, err
    plan = json.loads(out.strip().splitlines()[-1])
    template = PRESETS['imagenet100'].get('prompt_template', DPConfig.prompt_template)
    assert len(plan['prompts']) == 100 and plan['prompts']['n03947888'] == template.format(name='pirate ship')
    assert plan['prompts']['n02123045'] == template.format(name='tabby cat') and plan['prompts']['n02869837'] == template.format(name='bonnet')
    cost = plan['generation_cost']
    assert cost['assumed_mfu'] == ASSUMED_MFU and set(cost['gpu_hours']) == set(GPU_PEAK_TFLOPS) == {'A100-SXM4-80GB', 'H100-SXM'}
    assert cost['gpu_hours'] == generation_cost(DPConfig(**plan['config']), plan, 8 ** 2)['gpu_hours']   # the tiny SD's 8x8 latents
    for h in cost['gpu_hours'].values(): assert 0 < h['initial_pool'] < h['max_images']
    a100, h100 = cost['gpu_hours']['A100-SXM4-80GB'], cost['gpu_hours']['H100-SXM']
    assert h100['max_images'] == pytest.approx(a100['max_images'] * 312 / 989, rel=0.01)
    line, = [l for l in out.splitlines() if 'GPU-hours' in l]
    assert 'A100-SXM4-80GB (312 TFLOP/s bf16 dense)' in line and 'H100-SXM (989 TFLOP/s' in line and f'assuming {ASSUMED_MFU:.0%} MFU' in line

def test_dry_run_prompts_file(imagenet_root, tmp_path):
    "--prompts FILE: its prompts (one, or a list used in turn) win in the plan; a key that is no class of the run fails in one line naming the file and the key."
    f = tmp_path / 'prompts.json'
    f.write_text(json.dumps({'n03947888': ['a pirate ship at sea', 'a pirate ship in a harbour'], 'n02108089': 'a boxer dog, portrait'}))
    code, out, err = _dry([*IN100(imagenet_root, tmp_path / 'run'), '--prompts', f])
    assert code == 0, err
    prompts = json.loads(out.strip().splitlines()[-1])['prompts']
    assert prompts['n03947888'] == ['a pirate ship at sea', 'a pirate ship in a harbour'] and prompts['n02108089'] == 'a boxer dog, portrait'
    assert 'pirate' not in prompts['n02123045'] and len(prompts) == 100
    f.write_text(json.dumps({'n03947888': 'a pirate ship', 'pirate ship': 'a pirate ship'}))
    code, out, err = _dry([*IN100(imagenet_root, tmp_path / 'run'), '--prompts', f])
    assert code == 1 and err.strip().splitlines() == [
        f"dp-train: dry run: prompts {str(f)!r} names 1 class(es) that are no class of this run: 'pirate ship'; "
        "keys are class folder names, e.g. ['n02869837', 'n01749939', 'n02488291']"]
    f.write_text('{"n03947888": []}')
    code, out, err = _dry([*IN100(imagenet_root, tmp_path / 'run'), '--prompts', f])
    assert code == 1 and err.strip().splitlines() == [f"dp-train: dry run: prompts {str(f)!r}: class 'n03947888' has an empty list of prompts: give at least one"]

def test_prompts_on_digits_is_an_error(tmp_path):
    "digits draws by class label: --prompts there names the field and fails, in the dry run and in the run itself."
    f = tmp_path / 'prompts.json'; f.write_text('{"3": "a three"}')
    code, out, err = _dry(['--out', tmp_path / 'run', '--prompts', f])
    msg = f"prompts {str(f)!r}: dataset 'digits' draws its images by class label, not from prompts: drop --prompts"
    assert code == 1 and err.strip().splitlines() == [f"dp-train: dry run: {msg}"]
    r = subprocess.run(['dp-train', '--out', str(tmp_path / 'run'), '--prompts', str(f), '--epochs', '1'], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].endswith(msg), r.stderr

def test_flop_constants_match_the_benchmark():
    "The FLOPs the dry run's GPU-hours use are benchmarks/full_size_cpu.json's, to the 4 decimals copied."
    from deliberate_practice.cli import SD15_DECODE_TFLOP, SD15_TFLOP_PER_STEP
    bench = json.loads((Path(__file__).parents[1] / 'benchmarks' / 'full_size_cpu.json').read_text())['flops']
    assert bench['unit'] == 'TFLOP per image'
    views = {'vae': 'SD VAE view', 'vae, checkpointed': 'SD VAE view, checkpointed', 'taesd': 'TAESD view'}
    assert set(SD15_TFLOP_PER_STEP) == set(views)
    for k, parts in SD15_TFLOP_PER_STEP.items():
        measured = bench['per_step_512'][views[k]]
        for part, v in parts.items(): assert v == pytest.approx(measured[part], abs=6e-5), (k, part)
        assert SD15_DECODE_TFLOP == pytest.approx(measured['decode'], abs=6e-5)
