"""Bring your own classes: `dp-train --dataset folder` on a labelled image folder, with any SD-1.x/2.x diffusers folder as the generator."""
import json, os, shutil, subprocess
import pytest, torch
from conftest import imagenet_layout

ENV = dict(os.environ, PYTHONWARNINGS='default', OMP_NUM_THREADS='1')
CLASSES = ['blue_jay', 'owl', 'red_kite']


@pytest.fixture(scope='module')
def parts(tmp_path_factory):
    "A 3-class bird folder (val/ 4 images a class, test/ 2, a classes.json for one class) and a saved tiny SD folder."
    from deliberate_practice.generators import StableDiffusionGenerator, tiny_sd_components
    root = tmp_path_factory.mktemp('own')
    imagenet_layout(root / 'birds', CLASSES, n=4, size=(24, 20), ext='png', splits=('val',))
    imagenet_layout(root / 'birds', CLASSES, n=2, size=(24, 20), ext='png', splits=('test',))
    (root / 'birds' / 'classes.json').write_text(json.dumps({'owl': 'a photo of an owl, a bird of prey'}))
    StableDiffusionGenerator(**tiny_sd_components(), class_names=['unused']).save_pretrained(root / 'sd')
    return root


def _train(parts, out, data_root=None, *extra):
    return subprocess.run(['dp-train', '--dataset', 'folder', '--data-root', str(data_root or parts / 'birds'), '--sd-path', str(parts / 'sd'), '--out', str(out),
                           '--epochs', '2', '--pool-size', '6', '--device', 'cpu', '--mixed-precision', 'no', '--model', 'test_vit', '--image-size', '16',
                           '--batch-size', '2', '--n-steps', '2', '--num-workers', '0', *extra], env=ENV, capture_output=True, text=True, timeout=300)


def test_folder_run_end_to_end(parts, tmp_path):
    "The issue's command: 3 classes from the folder names, their prompts, a class-balanced pool, val and test scored."
    r = _train(parts, tmp_path / 'run')
    assert r.returncode == 0, r.stderr[-3000:]
    fin = json.loads((tmp_path / 'run' / 'final.json').read_text())
    assert fin['classes'] == CLASSES
    assert fin['prompts'] == ['a photo of a blue jay', 'a photo of an owl, a bird of prey', 'a photo of a red kite']
    assert fin['pool_class_counts'] == [2, 2, 2] and fin['pool_size'] == 6
    assert fin['config']['dataset'] == 'folder' and fin['config']['lr'] == 1.5e-3          # the folder preset, with the flags over it
    assert 0 <= fin['val_acc'] <= 1 and 0 <= fin['test_acc'] <= 1
    assert (tmp_path / 'run' / 'pool' / 'index.json').exists()                              # a Stable Diffusion pool lives on disk
    assert 'starting folder run' in r.stdout and 'epoch   2/2' in r.stdout


def test_folder_without_test_reports_val_only(parts, tmp_path):
    "No test/: one warning line, and the run reports val accuracy only."
    root = tmp_path / 'birds'; shutil.copytree(parts / 'birds', root); shutil.rmtree(root / 'test')
    r = _train(parts, tmp_path / 'run', root, '--quiet')
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [f"dp-train: warning: data_root {str(root)!r} has no test/ folder: the run reports val accuracy only "
                                             f"(put held-out images in {root}/test/<class>/ for a test score)"]
    fin = json.loads((tmp_path / 'run' / 'final.json').read_text())
    assert fin['test_acc'] is None and fin['val_acc'] is not None


def test_prompt_template_flag(parts, tmp_path):
    r = subprocess.run(['dp-train', '--dataset', 'folder', '--data-root', str(parts / 'birds'), '--sd-path', str(parts / 'sd'), '--out', str(tmp_path / 'run'),
                        '--prompt-template', 'a {name} in the wild', '--print-config'], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)['prompt_template'] == 'a {name} in the wild'
    from deliberate_practice.config import preset
    from deliberate_practice.data import dataset_entry
    cfg = preset('folder', data_root=str(parts / 'birds'), sd_path=str(parts / 'sd'), prompt_template='a {name} in the wild')
    assert dataset_entry('folder').classes(cfg)[1] == ['a blue jay in the wild', 'a photo of an owl, a bird of prey', 'a red kite in the wild']


def test_dry_run_lists_every_folder_problem(parts, tmp_path):
    "The dry run names all the folder's problems at once (the run itself stops at the first, before any weight is loaded)."
    root = tmp_path / 'birds'; shutil.copytree(parts / 'birds', root)
    shutil.rmtree(root / 'test' / 'owl'); (root / 'val' / 'red_kite' / 'red_kite_0.png').write_bytes(b'')
    r = subprocess.run(['dp-train', '--dataset', 'folder', '--data-root', str(root), '--sd-path', str(parts / 'sd'), '--device', 'cpu', '--out', str(tmp_path / 'run'),
                        '--dry-run'], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert len(err) == 2 and 'only in val: owl' in err[0] and 'red_kite_0.png cannot be read' in err[1]
    ok = subprocess.run(['dp-train', '--dataset', 'folder', '--data-root', str(parts / 'birds'), '--sd-path', str(parts / 'sd'), '--device', 'cpu',
                         '--out', str(tmp_path / 'run'), '--dry-run'], env=ENV, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    plan = json.loads(ok.stdout.strip().splitlines()[-1])
    assert plan['data'] == dict(images=dict(val=12, test=6), n_classes=3) and plan['max_images'] > 6


def test_registry_drives_the_trainer(parts):
    "A dataset registered in Python is one entry: DPConfig accepts it and the trainer loads it, with no edit elsewhere."
    from deliberate_practice import config, data
    from deliberate_practice.trainer import DPTrainer
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6) % 3
    e = data.register_dataset(data.DatasetEntry('three_digits', classes=lambda cfg: (['0', '1', '2'], None), splits=lambda cfg, s: dict(val=(x, y)),
                                                check=lambda cfg: ({}, []), generator='digits', channels=1, image_size=8, in_memory=True, needs=()))
    try:
        t = DPTrainer(config.DPConfig(dataset='three_digits', pool_size=10, epochs=1, n_steps=2))   # an image for each of the generator's 10 classes
        fin = t.fit()
        assert fin['test_acc'] is None and 0 <= fin['val_acc'] <= 1 and t.pool is not None
    finally:
        data.DATASETS.pop(e.name); config.DATASETS.pop(e.name)


def test_prompts_file_reaches_the_generator(parts, tmp_path):
    "--prompts wins over classes.json and the template for the classes it names, in the generator the trainer builds."
    from deliberate_practice.config import preset
    from deliberate_practice.generators import build_parts
    f = tmp_path / 'prompts.json'; f.write_text(json.dumps({'owl': 'an owl at dusk', 'red_kite': 'a red kite over a field'}))
    cfg = preset('folder', data_root=str(parts / 'birds'), sd_path=str(parts / 'sd'), device='cpu', prompts=str(f))
    g, data = build_parts(cfg)
    assert g.class_names == CLASSES and g.prompts == ['a photo of a blue jay', 'an owl at dusk', 'a red kite over a field']
    f.write_text(json.dumps({'owl': 'an owl', 'eagle': 'an eagle'}))
    with pytest.raises(ValueError, match=r"prompts .*prompts.json' names 1 class\(es\) that are no class of this run: 'eagle'"): build_parts(cfg)


def test_registered_dataset_honours_prompts(tmp_path):
    "A Stable Diffusion dataset registered in Python gets --prompts from the registry, keyed by its folder names."
    from deliberate_practice import config, data
    e = data.register_dataset(data.DatasetEntry('two_shapes', classes=lambda cfg: (['Round', 'Square'], ['a circle', 'a square']),
                                                splits=lambda cfg, s: {}, check=lambda cfg: ({}, []), folders=lambda cfg: ['round', 'square']))
    try:
        f = tmp_path / 'p.json'; f.write_text(json.dumps({'square': ['a red square', 'a blue square']}))
        cfg = config.DPConfig(dataset='two_shapes', data_root='/d', sd_path='/s', prompts=str(f))
        assert e.classes(cfg) == (['Round', 'Square'], ['a circle', ['a red square', 'a blue square']]) and e.check(cfg) == ({}, [])
        f.write_text(json.dumps({'Square': 'a square'}))                         # a class name, not its folder name
        assert e.check(cfg)[1] == [f"prompts {str(f)!r} names 1 class(es) that are no class of this run: 'Square'; keys are class folder names, e.g. ['round', 'square']"]
    finally:
        data.DATASETS.pop(e.name); config.DATASETS.pop(e.name)
