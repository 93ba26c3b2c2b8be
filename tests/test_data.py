"Split properties of `digits_splits` over seeds and sizes, and a bad-input table for the ImageNet loaders."
import pickle
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from deliberate_practice.data import (digits_splits, DIGITS_CLASSES, IMAGENET100_WNIDS, IMAGENET1K_WNIDS,
                                      imagenet_class_names, imagenet_folder, imagenet_splits)

TARGET = load_digits().target

@pytest.mark.parametrize('seed,n_gen,n_val', [(0, 900, 300), (1, 900, 300), (7, 500, 500), (3, 1000, 100)])
def test_digits_split_properties(seed, n_gen, n_val):
    s = digits_splits(seed, n_gen, n_val)
    sizes = {k: len(v[1]) for k, v in s.items()}
    assert sizes == dict(gen=n_gen, val=n_val, test=1797 - n_gen - n_val)
    # the three splits' label multisets add up to the whole dataset's, and each is stratified
    total = sum(np.bincount(v[1].numpy(), minlength=10) for v in s.values())
    assert (total == np.bincount(TARGET)).all()
    for k, (x, y) in s.items():
        assert np.abs(np.bincount(y.numpy(), minlength=10) - np.bincount(TARGET) * len(y) / 1797).max() <= 1, k
        assert x.shape == (len(y), 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() >= 0 and x.max() <= 1
    # disjoint: no image appears in two splits (all 1797 digits are distinct pixel arrays)
    rows = torch.cat([v[0].flatten(1) for v in s.values()])
    assert len(torch.unique(rows, dim=0)) == 1797
    s2 = digits_splits(seed, n_gen, n_val)
    assert all(torch.equal(s[k][0], s2[k][0]) and torch.equal(s[k][1], s2[k][1]) for k in s)

def test_digits_classes(): assert DIGITS_CLASSES == list('0123456789')

@pytest.mark.parametrize('kw,field', [(dict(n_gen=5), 'n_gen'), (dict(n_gen=1780), 'n_gen'), (dict(n_gen=900.0), 'n_gen'),
                                      (dict(n_val=5), 'n_val'), (dict(n_gen=1000, n_val=790), 'n_val')])
def test_digits_bad_sizes(kw, field):
    with pytest.raises(ValueError, match=field): digits_splits(**kw)

def test_imagenet_wnid_lists():
    assert len(IMAGENET100_WNIDS) == len(set(IMAGENET100_WNIDS)) == 100
    assert set(IMAGENET100_WNIDS) <= set(IMAGENET1K_WNIDS) and len(IMAGENET1K_WNIDS) == 1000
    assert imagenet_class_names(['n02123045', 'n01440764']) == ['tabby', 'tench']

WNIDS = IMAGENET100_WNIDS[:3]

def _png(path, size=6, value=128): Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)

@pytest.fixture
def tree(tmp_path):
    "train/ and val/ with 2 images per class for the first 3 ImageNet-100 wnids, plus an empty class folder and a corrupt file aside."
    for split in ('train', 'val'):
        for w in WNIDS:
            (tmp_path / split / w).mkdir(parents=True)
            for i in range(2): _png(tmp_path / split / w / f'{i}.png')
    (tmp_path / 'val' / 'n01440764').mkdir()
    (tmp_path / 'val' / 'n01440764' / 'notes.txt').write_text('not an image')
    return tmp_path

BAD = [  # (call, exception, text the message must contain)
    (lambda r: imagenet_folder(r / 'missing', WNIDS), FileNotFoundError, 'is not a folder'),
    (lambda r: imagenet_folder(r / 'val', WNIDS + ['n01443537']), FileNotFoundError, "['n01443537']"),
    (lambda r: imagenet_folder(r / 'val', None), FileNotFoundError, '996 of 1000 class folders are missing'),
    (lambda r: imagenet_folder(r / 'val', WNIDS + ['n01440764']), ValueError, "hold no images"),
    (lambda r: imagenet_folder(r / 'val', []), ValueError, 'wnids'),
    (lambda r: imagenet_folder(r / 'val', WNIDS * 2), ValueError, 'wnids'),
    (lambda r: imagenet_folder(r / 'val', WNIDS, image_size=-3), ValueError, 'image_size'),
    (lambda r: imagenet_folder(r / 'val', WNIDS, image_size=2.5), ValueError, 'image_size'),
    (lambda r: imagenet_splits(r, 'imagenet-100'), ValueError, 'subset'),
    (lambda r: imagenet_splits(r, 'imagenet100'), FileNotFoundError, '97 of 100 class folders are missing'),
    (lambda r: imagenet_splits(r / 'nowhere'), FileNotFoundError, 'train/ and val/'),
    (lambda r: imagenet_class_names(['n0000000x']), ValueError, 'n0000000x'),
]

@pytest.mark.parametrize('i', range(len(BAD)))
def test_imagenet_bad_inputs(tree, i):
    call, exc, text = BAD[i]
    with pytest.raises(exc) as e: call(tree)
    assert text in str(e.value), str(e.value)

def test_flat_val_folder_hint(tmp_path):
    _png(tmp_path / 'ILSVRC2012_val_00000001.JPEG')
    with pytest.raises(FileNotFoundError, match='valprep'): imagenet_folder(tmp_path, WNIDS)

def test_corrupt_image_names_the_file(tree):
    (tree / 'val' / WNIDS[1] / 'zz_corrupt.png').write_bytes(b'\x89PNG garbage')
    ds = imagenet_folder(tree / 'val', WNIDS)
    assert len(ds) == 7                                                # listed, not silently skipped
    i = [p for p, _ in ds.samples].index(str(tree / 'val' / WNIDS[1] / 'zz_corrupt.png'))
    with pytest.raises(OSError, match='zz_corrupt.png'): ds[i]

def test_loader_batches_and_pickles(tree):
    ds = imagenet_folder(tree / 'val', WNIDS[::-1], image_size=4)
    ds = pickle.loads(pickle.dumps(ds))                                # DataLoader workers need this
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=6)))
    assert x.shape == (6, 3, 4, 4) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.full_like(x, 128 / 255))
    assert sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]
    assert [ds.classes[l] for _, l in ds.samples] == [p.split('/')[-2] for p, _ in ds.samples]

@pytest.mark.parametrize('seed', [0, 1, 5])
def test_digits_per_class_is_balanced_nested_and_from_the_split(seed):
    "k images of each class, all from the split with their labels, the smaller k among the larger for one seed."
    from deliberate_practice.data import digits_per_class
    gen = digits_splits()['gen']
    rows = {bytes(r.numpy()): int(l) for r, l in zip((gen[0] * 16).round().to(torch.uint8).flatten(1), gen[1])}
    prev = set()
    for k in (1, 3, 10, 30, 87):
        x, y = digits_per_class(gen, k, seed=seed)
        assert torch.bincount(y, minlength=10).tolist() == [k] * 10
        keys = [bytes(r.numpy()) for r in (x * 16).round().to(torch.uint8).flatten(1)]
        assert all(rows[b] == int(l) for b, l in zip(keys, y)) and len(set(keys)) == 10 * k
        assert prev < set(keys); prev = set(keys)

@pytest.mark.parametrize('k', [0, -1, 88, 2.5, '10'])
def test_digits_per_class_bad_k(k):
    from deliberate_practice.data import digits_per_class
    with pytest.raises(ValueError, match='k must be'): digits_per_class(digits_splits()['gen'], k)


# The ImageNet-100 classes whose first WordNet lemma names something else, and the name their prompt uses (data.PROMPT_NAMES)
AMBIGUOUS_IN100 = {'n03947888': ('pirate', 'pirate ship'), 'n02108089': ('boxer', 'boxer dog'), 'n04592741': ('wing', 'airplane wing'),
                   'n03594734': ('jean', 'blue jean'), 'n03584829': ('iron', 'clothes iron'), 'n04067472': ('reel', 'fishing reel'),
                   'n04493381': ('tub', 'vat'), 'n03017168': ('chime', 'orchestral chime'), 'n03032252': ('cinema', 'movie theater'),
                   'n03930630': ('pickup', 'pickup truck'), 'n04336792': ('stretcher', 'medical stretcher'), 'n02123045': ('tabby', 'tabby cat'),
                   'n02231487': ('walking stick', 'stick insect'), 'n04517823': ('vacuum', 'vacuum cleaner')}

def test_imagenet100_prompt_names():
    from deliberate_practice.data import imagenet_prompt_names
    first, named = imagenet_class_names(IMAGENET100_WNIDS), imagenet_prompt_names(IMAGENET100_WNIDS)
    assert {w: (f, n) for w, f, n in zip(IMAGENET100_WNIDS, first, named) if f != n} == AMBIGUOUS_IN100
    assert 'pirate ship' in named[IMAGENET100_WNIDS.index('n03947888')]

def test_imagenet_prompts_through_the_registry():
    "The registry prompts ImageNet with cfg.prompt_template around the disambiguated name; no two of the 1000 prompts are alike (CLIP lower-cases)."
    from deliberate_practice.config import DPConfig
    from deliberate_practice.data import PROMPT_NAMES, dataset_entry
    names, prompts = dataset_entry('imagenet1k').classes(DPConfig(dataset='imagenet1k', data_root='/in', sd_path='/sd', prompt_template='{name}'))
    assert prompts == names and len({p.lower() for p in prompts}) == 1000
    first = [f.lower() for f in imagenet_class_names()]
    shared = {w for w, f in zip(IMAGENET1K_WNIDS, first) if first.count(f) > 1}
    assert shared == {'n02012849', 'n03126707', 'n03710637', 'n03710721', 'n02113186', 'n02963159'}   # crane, maillot, Cardigan/cardigan twice
    assert len(shared - set(PROMPT_NAMES)) == 1                               # one of each pair may keep its lemma: cardigan, the sweater
    cfg = DPConfig(dataset='imagenet100', data_root='/in', sd_path='/sd', prompt_template='a photo of a {name}')
    assert dataset_entry('imagenet100').classes(cfg)[1][IMAGENET100_WNIDS.index('n03947888')] == 'a photo of a pirate ship'

BAD_PROMPTS = [  # (file text, the problem after "prompts '<file>'")
    (None, " cannot be read (FileNotFoundError: No such file or directory): fix the path"),
    ('{"owl": ', " is not JSON (Expecting value: line 1 column 9 (char 8))"),
    ('"an owl"', ' holds a string, not an object'),
    ('{"owl": "an owl", "eagle": "x", "hawk": "y"}', " names 2 class(es) that are no class of this run: 'eagle', 'hawk'; keys are class folder names"),
    ('{"owl": ""}', ": class 'owl' has an empty prompt"),
    ('{"owl": []}', ": class 'owl' has an empty list of prompts"),
    ('{"owl": {"a": "b"}}', ": class 'owl' has an object: give a prompt or a list of prompts"),
    ('{"owl": ["x", 1]}', ": class 'owl' has an array holding a non-string"),
]

@pytest.mark.parametrize('i', range(len(BAD_PROMPTS)))
def test_bad_prompts_file(tmp_path, i):
    "Every problem of a prompts file is one line that names the file, and the key where there is one."
    from deliberate_practice.data import read_prompts
    text, problem = BAD_PROMPTS[i]
    f = tmp_path / 'p.json'
    if text is not None: f.write_text(text)
    given, problems = read_prompts(f, ['owl', 'red_kite'])
    assert given == {} and len(problems) == 1 and '\n' not in problems[0]
    assert problems[0].startswith(f"prompts {str(f)!r}{problem}"), problems[0]
