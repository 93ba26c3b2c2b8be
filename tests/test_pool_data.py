"""`dp-pool` on a real digits run: export to an ImageFolder tree torchvision opens, import it back unchanged, and a self-contained HTML gallery."""
import csv, json, math, shutil, tarfile
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
import pytest
import torch
from deliberate_practice import pooldata
from deliberate_practice.pooldata import dp_pool, open_source, class_names, MANIFEST, SPEC_FILE
from deliberate_practice.pool import Pool
from deliberate_practice.store import PROVENANCE, to_uint8


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A digits run (about 10 s on CPU): pool of 200, half of it refreshed (the other half scored since birth), every pruned image kept."
    from deliberate_practice.trainer import DPTrainer
    from deliberate_practice.config import preset
    out = tmp_path_factory.mktemp('pooldata') / 'run'
    DPTrainer(preset('digits', epochs=4, pool_size=200, patience=1, prune_frac=0.5, seed=0, keep_pruned=True), out=out).fit()
    return out


def cli(argv, capsys):
    "(exit status, stdout, stderr) of `dp-pool argv`."
    try: dp_pool([str(a) for a in argv]); code = 0
    except SystemExit as e: code = e.code
    o = capsys.readouterr()
    return code, o.out, o.err


def test_export_is_an_imagefolder_with_the_pools_counts_and_entropies(run, tmp_path, capsys):
    pool, _ = open_source(run); names = class_names(pool, run)
    code, out, err = cli(['export', run, tmp_path / 'exp', '--quiet'], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / 'exp' / MANIFEST, newline='')))
    assert len(rows) == len(pool) == 200 and all(r['pruned'] == '0' for r in rows)
    want = {names[c]: n for c, n in enumerate(pool.class_counts(len(names)))}
    tv = pytest.importorskip('torchvision', reason='torchvision is not installed: the ImageFolder check needs it')
    ds = tv.datasets.ImageFolder(tmp_path / 'exp')
    assert Counter(ds.classes[t] for t in ds.targets) == want
    assert len(ds) == len(pool)
    assert not any(r[k].lower() in ('nan', 'none') for r in rows for k in ('entropy_at_birth', 'entropy_last'))   # unknown: an empty cell
    for k in ('entropy_at_birth', 'entropy_last'):
        got = torch.tensor([float(r[k]) if r[k] != '' else math.nan for r in rows])
        assert torch.allclose(got, getattr(pool, k), equal_nan=True), k
    assert torch.isfinite(pool.entropy_last).all() and pool.entropy_at_birth.isnan().any()   # kept from the initial pool: unscored at birth
    assert not torch.equal(pool.entropy_last.isnan(), pool.entropy_at_birth.isnan())         # so the two columns differ
    assert [int(r['seed']) for r in rows] == pool.seed.tolist() and [int(r['born']) for r in rows] == pool.born.tolist()
    assert json.loads((tmp_path / 'exp' / SPEC_FILE).read_text()) == pool.spec


def test_import_gives_the_same_images_and_labels(run, tmp_path, capsys):
    pool, _ = open_source(run)
    assert cli(['export', run, tmp_path / 'exp', '--quiet'], capsys)[0] == 0
    code, out, err = cli(['import', tmp_path / 'exp', tmp_path / 'pool', '--quiet'], capsys)
    assert code == 0, err
    back = Pool.load(tmp_path / 'pool')
    assert torch.equal(back.store.get(slice(None)), to_uint8(pool.store.get(slice(None))))
    assert torch.equal(back.labels, pool.labels)
    for k in PROVENANCE: assert torch.allclose(getattr(back, k).double(), getattr(pool, k).double(), equal_nan=True), k
    assert back.spec == pool.spec
    small = pooldata.import_pool(tmp_path / 'exp', tmp_path / 'pool64', shard_size=64)     # streamed shard by shard: 4 shards of at most 64
    assert len(small.store.shards) == 4 and torch.equal(small.store.get(slice(None)), back.store.get(slice(None)))


class Page(HTMLParser):
    "The class sections, img srcs, external references and the entropy plot of a page."
    def __init__(self):
        super().__init__(); self.sections, self.srcs, self.external, self.plot, self.stack = [], [], [], False, []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'section': self.stack.append(a.get('id')); self.sections.append(a)
        if tag == 'img':
            self.srcs.append(a.get('src', ''))
            if 'entropy' in self.stack and a.get('alt') == 'mean entropy by round': self.plot = True
        if tag in ('script', 'link', 'iframe') or (tag != 'img' and a.get('src')) or a.get('href'): self.external.append(tag)
    def handle_endtag(self, tag):
        if tag == 'section': self.stack.pop()


def test_gallery_is_one_self_contained_page(run, tmp_path, capsys):
    code, out, err = cli(['gallery', run, '--out', tmp_path / 'g.html', '--per-cell', '4'], capsys)
    assert code == 0, err
    assert [f.name for f in tmp_path.iterdir()] == ['g.html']
    page = Page(); page.feed((tmp_path / 'g.html').read_text())
    assert sorted(s['id'] for s in page.sections if s.get('class') == 'class') == [f'class-{c}' for c in range(10)]
    assert page.srcs and all(s.startswith('data:image/png;base64,') for s in page.srcs), [s[:40] for s in page.srcs if not s.startswith('data:')]
    assert page.plot and not page.external
    rounds = sorted((run / 'pruned').glob('r[0-9][0-9][0-9][0-9][0-9].json'))
    assert rounds, "the run archived no refresh: the plot would show only the pool now"


def test_export_all_webdataset(run, tmp_path, capsys):
    pool, _ = open_source(run)
    n_pruned = sum(json.loads(f.read_text())['n_pruned'] for f in (run / 'pruned').glob('r[0-9][0-9][0-9][0-9][0-9].json'))
    code, out, err = cli(['export', run, tmp_path / 'wds', '--all', '--format', 'webdataset', '--shard-size', '100', '--quiet'], capsys)
    assert code == 0 and err == '', err
    rows = list(csv.DictReader(open(tmp_path / 'wds' / MANIFEST, newline='')))
    assert n_pruned > 0 and sum(r['pruned'] == '1' for r in rows) == n_pruned and len(rows) == len(pool) + n_pruned
    pruned = [pooldata.load_pruned(f) for f in pooldata.pruned_files(run)]
    want = torch.cat([t['entropy_at_birth'] for t in pruned])
    got = torch.tensor([float(r['entropy_at_birth']) if r['entropy_at_birth'] != '' else math.nan for r in rows if r['pruned'] == '1'])
    assert want.isnan().any() and torch.allclose(got, want, equal_nan=True)   # born in the initial pool, unscored: empty cells
    tars = sorted((tmp_path / 'wds').glob('pool-*.tar'))
    assert len(tars) == math.ceil(len(rows) / 100)
    with tarfile.open(tars[0]) as tf:
        names = tf.getnames(); key = rows[0]['id']
        assert names[:3] == [f'{key}.png', f'{key}.cls', f'{key}.json'] and len(names) == 300
        assert int(tf.extractfile(f'{key}.cls').read()) == pool.labels[0]


def test_all_without_keep_pruned_says_so(run, tmp_path, capsys):
    shutil.copytree(run, tmp_path / 'run')
    for f in (tmp_path / 'run' / 'pruned').glob('r[0-9][0-9][0-9][0-9][0-9].json'):
        f.write_text(json.dumps({**json.loads(f.read_text()), 'kept_all': False}))
    code, out, err = cli(['export', tmp_path / 'run', tmp_path / 'exp', '--all', '--quiet'], capsys)
    assert code == 0 and err.count('\n') == 1 and 'only a sample' in err


def test_errors_are_one_line(run, tmp_path, capsys):
    (tmp_path / 'full').mkdir(); (tmp_path / 'full' / 'x').write_text('x')
    code, out, err = cli(['export', run, tmp_path / 'full'], capsys)
    assert code == 2 and err.startswith('dp-pool: error: OUT ') and err.count('\n') == 1
    code, out, err = cli(['export', tmp_path, tmp_path / 'new'], capsys)
    assert code == 2 and 'neither a run folder' in err and err.count('\n') == 1
    assert cli(['export', run, tmp_path / 'exp', '--quiet'], capsys)[0] == 0
    (tmp_path / 'exp' / MANIFEST).unlink()
    odd = tmp_path / 'exp' / '3' / 'odd.png'; odd.write_bytes(pooldata.png_bytes(torch.zeros(3, 5, 7)))
    code, out, err = cli(['import', tmp_path / 'exp', tmp_path / 'pool'], capsys)
    assert code == 2 and err.count('\n') == 1 and str(odd) in err and not (tmp_path / 'pool').exists()


def test_a_failed_export_leaves_nothing(run, tmp_path, capsys, monkeypatch):
    calls = []
    def boom(x):
        calls.append(1)
        if len(calls) > 50: raise OSError(28, 'No space left on device')
        return png(x)
    png = pooldata.png_bytes; monkeypatch.setattr(pooldata, 'png_bytes', boom)
    code, out, err = cli(['export', run, tmp_path / 'exp', '--quiet'], capsys)
    assert code == 2 and 'No space left' in err
    assert list(tmp_path.iterdir()) == []
