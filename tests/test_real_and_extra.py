"Beyond the paper: real training images mixed into every epoch (never scored, pruned or counted as generated), and extra test sets over a subset of the classes."
import json, os, subprocess
from pathlib import Path
import pytest, torch
from conftest import imagenet_layout

ENV = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', MPLBACKEND='Agg')
CLASSES = ['blue_jay', 'owl', 'red_kite']


def test_digits_real_images_join_every_epoch_and_never_the_pool():
    from deliberate_practice.config import preset
    from deliberate_practice.trainer import DPTrainer
    from deliberate_practice.data import real_train_split
    torch.set_num_threads(1)
    kw = dict(epochs=4, pool_size=60, patience=1, n_steps=2, seed=2, lr=1e-6, decay_frac=0.0)      # lr ~0: val plateaus, refreshes follow
    cfg = preset('digits', real_train='gen', real_per_class=3, **kw)
    t = DPTrainer(cfg); fin = t.fit()
    assert (fin['real_train_images'], fin['real_draws_per_epoch']) == (30, 30)
    assert t.steps_per_epoch == 3 and t.step == 12                                          # ceil((60 pool + 30 real) / 32) a epoch
    assert fin['refreshes'] >= 1 and fin['n_generated'] == 60 * (1 + fin['refreshes'])       # real images are not counted as generated
    assert len(t.pool) == 60 and fin['pool_class_counts'] == [6] * 10
    xr, _ = real_train_split(cfg, 8)
    pool = t.pool.get_images(slice(None))
    assert not any(torch.equal(p, r) for p in pool for r in xr)                             # no real image ever in the pool
    order = t._epoch_order()
    assert len(order) == 90 and sorted(order) == list(range(90))                             # every pool image and every real image once
    base = DPTrainer(preset('digits', **kw)); fb = base.fit()
    assert fb['real_train_images'] == 0 and base.step == 8                                    # 2 steps an epoch without them
    vec = torch.nn.utils.parameters_to_vector
    assert not torch.equal(vec(base.model.parameters()), vec(t.model.parameters()))          # the real images changed the training


def test_real_weight_draws_each_real_image_on_average():
    from deliberate_practice.config import preset
    from deliberate_practice.trainer import DPTrainer
    t = DPTrainer(preset('digits', pool_size=40, n_steps=2, real_train='gen', real_per_class=2, real_weight=2.5)); t.build_pool()
    o = t._epoch_order()
    assert t.n_real_draws == 50 and len(o) == 90
    real = torch.tensor([i - 40 for i in o if i >= 40])
    assert torch.bincount(real, minlength=20).tolist().count(2) == 10 and set(torch.bincount(real, minlength=20).tolist()) == {2, 3}


@pytest.fixture(scope='module')
def parts(tmp_path_factory):
    from deliberate_practice.generators import StableDiffusionGenerator, tiny_sd_components
    root = tmp_path_factory.mktemp('rx')
    imagenet_layout(root / 'birds', CLASSES, n=3, size=(24, 20), ext='png', splits=('val', 'test'))
    imagenet_layout(root / 'real', CLASSES, n=4, size=(20, 20), ext='png', splits=('train',))
    imagenet_layout(root / 'two', ['blue_jay', 'red_kite'], n=5, size=(20, 24), ext='png', splits=('test',))
    StableDiffusionGenerator(**tiny_sd_components(), class_names=['unused']).save_pretrained(root / 'sd')
    return root


def test_folder_run_with_real_train_and_an_extra_test_set(parts, tmp_path):
    "A 3-class folder run with --real-train and --extra-test two=DIR (2 of the 3 classes): final.json has the real count and the column; no real image is in the pool or pruned."
    out = tmp_path / 'run'
    r = subprocess.run(['dp-train', '--dataset', 'folder', '--data-root', str(parts / 'birds'), '--sd-path', str(parts / 'sd'), '--out', str(out),
                        '--epochs', '3', '--patience', '1', '--pool-size', '6', '--model', 'test_vit', '--image-size', '16', '--batch-size', '4', '--n-steps', '2',
                        '--num-workers', '0', '--device', 'cpu', '--mixed-precision', 'no', '--real-train', str(parts / 'real' / 'train'), '--real-per-class', '2',
                        '--extra-test', f"two={parts / 'two' / 'test'}", '--lr', '1e-6', '--decay-frac', '0'],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    fin = json.loads((out / 'final.json').read_text())
    assert (fin['real_train_images'], fin['real_draws_per_epoch']) == (6, 6)
    assert set(fin['extra_test']) == {'two'} and 0 <= fin['extra_test']['two'] <= 1
    hist = [json.loads(l) for l in (out / 'history.jsonl').read_text().splitlines()]
    assert all('extra_two_acc' in h for h in hist) and hist[-1]['extra_two_acc'] == fin['extra_test']['two']
    assert fin['refreshes'] >= 1 and fin['n_generated'] == 6 * (1 + fin['refreshes'])
    from deliberate_practice.pool import Pool
    from deliberate_practice.data import real_train_split
    from deliberate_practice.config import DPConfig
    cfg = DPConfig.from_dict(fin['config'])
    real = torch.stack([x for x, _ in real_train_split(cfg, 16)])
    kept = [Pool.load(out / 'pool').get_images(slice(None))]
    from safetensors.torch import load_file
    kept += [load_file(str(f))['images'].float() / 255 for f in (out / 'pruned').glob('r*-*.safetensors')]
    for imgs in kept: assert not any(torch.allclose(p, q, atol=1 / 255) for p in imgs for q in real)   # never in the pool, never pruned


def test_extra_test_restricts_the_logits_to_its_classes(parts):
    "A test set of the run's classes 0 and 2 (its labels 0, 1): a model whose top logit is always the absent class 1, its second the true class, scores 1.0 restricted, 0.5 not."
    from deliberate_practice.config import DPConfig
    from deliberate_practice.data import extra_test_split
    from deliberate_practice.trainer import DPTrainer
    from deliberate_practice.runfolder import make_accelerator
    cfg = DPConfig(dataset='folder', data_root=str(parts / 'birds'), sd_path=str(parts / 'sd'))
    ds, idx = extra_test_split(cfg, 'two', parts / 'two' / 'test', 16)
    assert idx == [0, 2] and len(ds) == 10 and sorted(set(ds.targets)) == [0, 1]
    run_class = torch.tensor([0., 0., 2., 2., 2.])
    data = torch.utils.data.TensorDataset(run_class[:, None, None, None], torch.tensor([0, 0, 1, 1, 1]))   # set labels 0, 1 = run classes 0, 2
    class SecondBest(torch.nn.Module):
        def __init__(self): super().__init__(); self.w = torch.nn.Parameter(torch.zeros(1))
        def forward(self, x):
            c = x.flatten(1)[:, 0]
            return torch.where((c == 0)[:, None], torch.tensor([8., 9., 0.]), torch.tensor([0., 9., 8.])) + 0 * self.w
    t = DPTrainer.__new__(DPTrainer)
    t.cfg, t.world, t.device, t.progress, t.epoch, t.ema, t.acc, t.model = cfg, 1, torch.device('cpu'), False, 0, None, make_accelerator(cfg), SecondBest()
    assert t.evaluate(data, idx) == 1.0                                     # restricted to the set's classes: the true class wins
    assert t.evaluate(data) == 0.6                                          # unrestricted: class 1 every time, right only by the labels' coincidence


def test_extra_test_sets_are_columns_and_claims_of_the_table():
    "Results scored on an extra set 'rot': the table gains its column, and the claims DP-100 - random and best DP - static WSD on it, paired by seed, in the Holm family."
    from deliberate_practice.ablation import table1_markdown, claims, summarize
    gaps = {'static-wsd': 0.0, 'random-p8-100': 1.0, 'dp-p8-100': 3.0}
    res = [dict(row=r, seed=s, test_acc=0.9, val_acc=0.9 + g / 100, n_generated=100, wall_s=1.0, config={}, extra=dict(rot=0.5 + (g + 0.1 * (s % 3)) / 100),
                history=[dict(epoch=1, n_generated=100, val_acc=0.9, test_acc=0.9)]) for r, g in gaps.items() for s in range(1, 10)]
    table = table1_markdown(res)
    assert '| Val. Acc. | Test Acc. | rot Acc. | paper Val.' in table and '| 53.10 ± 0.' in table          # dp-p8-100 on rot: 53.1 +- 0.09
    c = {d['claim']: d for d in claims(res)}
    assert c['DP-100 - random (rot)']['mean'] == pytest.approx(2.0) and c['DP-100 - random (rot)']['verdict'] == 'holds'
    assert c['best DP - static WSD (rot)']['mean'] == pytest.approx(3.0)
    assert c['DP-100 - random']['verdict'] == 'tie' and c['DP-100 - random (rot)']['family'] == 5      # test accuracies equal; five comparisons in all (the image share too)
    assert summarize(res)['dp-p8-100']['extra']['rot'][0] == pytest.approx(0.531)


def test_dp_reproduce_reports_the_extra_column(parts, tmp_path):
    "dp-reproduce on the 3-class folder with an extra 2-of-3-class test set: results.json and the table carry its column."
    over = ['epochs=2', 'pool_size=6', 'model="test_vit"', 'image_size=16', 'batch_size=4', 'n_steps=2', 'num_workers=0', 'device="cpu"',
            'mixed_precision="no"', f"extra_test=\"two={parts / 'two' / 'test'}\""]
    r = subprocess.run(['dp-reproduce', '--scale', 'folder', '--data-root', str(parts / 'birds'), '--sd-path', str(parts / 'sd'), '--rows', 'static-wsd',
                        '--seeds', '0', '--out', str(tmp_path / 'rep'), '--overrides', *over], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / 'rep' / 'results.json').read_text())
    assert set(res[0]['extra']) == {'two'} and 0 <= res[0]['extra']['two'] <= 1
    assert '| two Acc. |' in (tmp_path / 'rep' / 'results.md').read_text() and '| two Acc. |' in r.stdout
