"""Input files and settings a hostile probe got through (issue 24): 16-bit images, truncated images and broken symbolic links that
the dry run passed, and sampling settings the Python API took unchecked. Each bad input is a one-line error naming the file or field."""
import io, math, os

import numpy as np
import pytest
import torch
from PIL import Image

from deliberate_practice.config import MAXIMA, Sampling
from deliberate_practice.data import check_folder, check_imagenet, folder_splits
from deliberate_practice.generators import load_digits_generator
from deliberate_practice.pool import Pool

from conftest import imagenet_layout

# ---------------------------------------------------------------- 16-bit images

RAMP16 = (np.arange(16 * 16).reshape(16, 16) * 257 + np.arange(16)[:, None] * 3).astype(np.uint16)  # every 8-bit level, odd low bytes


def save16(path, mode):
    "Save `RAMP16` as a 16-bit grayscale image of PIL `mode` ('I;16' PNG, 'I;16B' or 'I' TIFF); return the mode PIL reopens it in."
    if mode == 'I;16': Image.fromarray(RAMP16).save(path)
    elif mode == 'I;16B': Image.frombytes('I;16B', (16, 16), RAMP16.astype('>u2').tobytes()).save(path)
    else: Image.fromarray(RAMP16.astype(np.int32)).save(path)
    with Image.open(path) as im: return im.mode


def two_class_folder(root, write):
    "A folder dataset with classes a and b in val/, one image each written by `write(path_without_suffix)`; returns the val split at 16 px."
    for c in ('a', 'b'):
        (root / 'val' / c).mkdir(parents=True); write(root / 'val' / c / 'x')
    with pytest.warns(UserWarning, match='no test/ folder'): return folder_splits(root, image_size=16)['val']


@pytest.mark.parametrize("mode, ext", [('I;16', 'png'), ('I;16B', 'tif'), ('I', 'tif')])
def test_16bit_grayscale_loads_as_value_shifted_right_8_bits(tmp_path, mode, ext):
    "A 16-bit gradient comes out as value >> 8 on all three channels, not clipped to white at 255."
    modes = []
    val = two_class_folder(tmp_path, lambda p: modes.append(save16(p.with_suffix('.' + ext), mode)))
    assert modes == [mode, mode]                                    # PIL reopens the file in the mode under test
    x = val[0][0]                                                   # (3, 16, 16) float in [0, 1], as the trainer sees it
    want = torch.from_numpy((RAMP16 >> 8).astype(np.float32))
    assert (x * 255 - want).abs().max() <= 1 / 64                   # value >> 8 (round(value / 257) would differ by 1 on some)
    assert (x[0] == x[1]).all() and (x[1] == x[2]).all()


def test_16bit_colour_pngs_load_as_value_shifted_right_8_bits(tmp_path):
    "PIL itself reads 48-bit RGB and 32-bit gray+alpha PNGs as 8-bit RGB / RGBA (value >> 8): the loader keeps that."
    rgb = (np.arange(16 * 16 * 3).reshape(16, 16, 3) * 85).astype('>u2')
    def write(p):                                                   # a 48-bit RGB PNG, written chunk by chunk (PIL cannot save one)
        import struct, zlib
        chunk = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
        raw = b''.join(b'\0' + row.tobytes() for row in rgb)
        p.with_suffix('.png').write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 16, 16, 16, 2, 0, 0, 0))
                                          + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
    x = two_class_folder(tmp_path, write)[0][0]
    assert (x * 255 - torch.from_numpy((rgb >> 8).astype(np.float32)).permute(2, 0, 1)).abs().max() <= 1 / 64


def test_8bit_images_load_unchanged(tmp_path):
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    x = two_class_folder(tmp_path, lambda p: Image.fromarray(grey).save(p.with_suffix('.png')))[0][0]
    assert (x * 255 - torch.from_numpy(grey.astype(np.float32))).abs().max() <= 1 / 64

# ---------------------------------------------------------------- truncated images and broken links in the dry run

def photo(seed=0, size=(375, 500)):
    "An ImageNet-sized RGB array: smooth gradients plus noise."
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size[0], :size[1]]
    a = np.stack([xx * 255 / size[1], yy * 255 / size[0], (xx + yy) % 256], -1) + rng.normal(0, 20, (*size, 3))
    return a.clip(0, 255).astype(np.uint8)


def encoded(fmt, **kw):
    b = io.BytesIO(); Image.fromarray(photo()).save(b, fmt, **kw); return b.getvalue()


@pytest.fixture
def folder(tmp_path):
    "A good folder dataset: two classes in val/ and test/, one small image each."
    imagenet_layout(tmp_path, ['a', 'b'], size=(8, 8), ext='png', splits=('val', 'test'))
    assert check_folder(tmp_path) == (dict(val=2, test=2), [])
    return tmp_path


GOOD = {'plain.jpg': ('JPEG', {}), 'optimized.jpg': ('JPEG', dict(optimize=True)), 'progressive.JPEG': ('JPEG', dict(progressive=True)),
        'q95.jpeg': ('JPEG', dict(quality=95, subsampling=0)), 'photo.png': ('PNG', {}), 'photo.webp': ('WEBP', {}),
        'photo.bmp': ('BMP', {}), 'photo.tif': ('TIFF', {})}


def test_good_images_pass(folder):
    for name, (fmt, kw) in GOOD.items(): (folder / 'val' / 'a' / name).write_bytes(encoded(fmt, **kw))
    (folder / 'val' / 'a' / 'trailer.jpg').write_bytes(encoded('JPEG') + b'\0' * 1000 + b'camera maker data')   # bytes after the EOI marker
    (folder / 'val' / 'b' / 'link.png').symlink_to(folder / 'val' / 'a' / 'photo.png')                        # a symbolic link that works
    assert check_folder(folder) == (dict(val=len(GOOD) + 4, test=2), [])


@pytest.mark.parametrize("name, fmt, kw", [(n, f, k) for n, (f, k) in GOOD.items()] + [('no_eoi.jpg', 'JPEG', 'eoi')])
def test_truncated_image_is_a_problem_naming_it(folder, name, fmt, kw):
    "The last 30% of the bytes dropped (or only a JPEG's EOI marker): the dry run names the file, as the real run's decode would fail."
    data = encoded(fmt) if kw == 'eoi' else encoded(fmt, **kw)
    f = folder / 'test' / 'b' / name
    f.write_bytes(data[:-2] if kw == 'eoi' else data[:int(len(data) * 0.7)])
    with pytest.raises(OSError): Image.open(f).convert('RGB')                  # what the run's loader would hit, hours later
    counts, problems = check_folder(folder)
    assert counts == dict(val=2, test=3)
    why = 'cannot be read (OSError)' if fmt == 'WEBP' else 'is truncated'     # PIL cannot even open a cut WebP
    assert problems == [f"image {f} {why}: delete or replace it"]


def test_broken_symbolic_links_are_problems_naming_them(folder):
    (folder / 'val' / 'a' / 'gone.JPEG').symlink_to(folder / 'nowhere.JPEG')
    (folder / 'test' / 'b' / 'loop.png').symlink_to(folder / 'test' / 'b' / 'loop.png')
    (folder / 'val' / 'b' / 'notes.txt').symlink_to(folder / 'nowhere.txt')   # not an image: torchvision skips it, so do we
    counts, problems = check_folder(folder)
    assert counts == dict(val=3, test=3)                                        # torchvision's ImageFolder lists both links
    assert problems == [f"image {folder / 'val' / 'a' / 'gone.JPEG'} is a broken symbolic link (to {folder / 'nowhere.JPEG'}): "
                        "delete it or restore its target",
                        f"image {folder / 'test' / 'b' / 'loop.png'} is a broken symbolic link (to {folder / 'test' / 'b' / 'loop.png'}): "
                        "delete it or restore its target"]


def test_imagenet_check_lists_every_broken_link_and_the_opened_truncated_jpeg(tmp_path):
    "check_imagenet opens `n_open` image per class, but lists every broken link (a directory listing, no decode)."
    wn = ['n01440764', 'n01443537']
    imagenet_layout(tmp_path, wn, n=2)
    assert check_imagenet(tmp_path, wn) == (dict(val=4, train=4), [])
    cut = tmp_path / 'train' / wn[0] / f'{wn[0]}_0.JPEG'                       # sorted first: the one opened
    cut.write_bytes(encoded('JPEG')[:5000])
    gone = tmp_path / 'val' / wn[1] / 'zz.JPEG'; gone.symlink_to(tmp_path / 'deleted.JPEG')
    counts, problems = check_imagenet(tmp_path, wn)
    assert counts == dict(val=5, train=4)
    assert problems == [f"image {gone} is a broken symbolic link (to {tmp_path / 'deleted.JPEG'}): delete it or restore its target",
                        f"image {cut} is truncated: delete or replace it"]

# ---------------------------------------------------------------- sampling settings

BAD_SAMPLING = [
    (dict(cfg_scale=float('nan')), "cfg_scale must be a finite number in [0, 100.0], got nan"),
    (dict(cfg_scale=float('inf')), "cfg_scale must be a finite number in [0, 100.0], got inf"),
    (dict(cfg_scale=-1.0), "cfg_scale must be a finite number in [0, 100.0], got -1.0"),
    (dict(cfg_scale='2'), "cfg_scale must be a finite number in [0, 100.0], got '2'"),
    (dict(omega=1e308), "omega must be a finite number in [0, 100.0], got 1e+308"),
    (dict(omega=float('nan')), "omega must be a finite number in [0, 100.0], got nan"),
    (dict(omega=-0.1), "omega must be a finite number in [0, 100.0], got -0.1"),
    (dict(n_steps=0), "n_steps must be an integer in [1, 1000], got 0"),
    (dict(n_steps=2.5), "n_steps must be an integer in [1, 1000], got 2.5"),
    (dict(n_steps=True), "n_steps must be an integer in [1, 1000], got True"),
    (dict(batch_size=0), "batch_size must be an integer in [1, 1000000], got 0"),
    (dict(guide_every=0), "guide_every must be an integer in [1, 1000], got 0"),
    (dict(guidance_batch_size=-2), "guidance_batch_size must be an integer in [1, 1000000], got -2"),
    (dict(guidance_form='grad'), "guidance_form must be one of ('eps', 'fgds'), got 'grad'"),
]


@pytest.mark.parametrize("kw, msg", BAD_SAMPLING)
def test_sampling_rejects_bad_settings(kw, msg):
    with pytest.raises(ValueError) as e: Sampling(**kw)
    assert str(e.value) == msg


def test_sampling_takes_every_good_setting():
    s = Sampling(cfg_scale=np.float32(7.5), omega=MAXIMA['omega'], n_steps=np.int64(1000), batch_size=1, guide_every=1000,
                 guidance_batch_size=None, guidance_form='fgds')
    assert (s.cfg_scale, type(s.cfg_scale), s.n_steps, type(s.n_steps)) == (7.5, float, 1000, int)   # numpy numbers become Python ones
    s = Sampling(cfg_scale=0, omega=0)
    assert (s.cfg_scale, s.omega, s.n_steps, s.batch_size) == (0.0, 0.0, 20, None)


class Counting:
    "The digits generator, counting its `sample` calls."
    def __init__(self): self.gen, self.calls = load_digits_generator(), 0
    def __getattr__(self, k): return getattr(self.gen, k)
    def sample(self, *a, **kw): self.calls += 1; return self.gen.sample(*a, **kw)


@pytest.fixture(scope='module')
def digits(): return Counting()


@pytest.mark.parametrize("kw, msg", BAD_SAMPLING[:2] + BAD_SAMPLING[4:6] + BAD_SAMPLING[7:8])
def test_pool_generate_rejects_bad_sampling_before_generating(digits, kw, msg):
    calls = digits.calls
    with pytest.raises(ValueError) as e: Pool.generate(digits, torch.arange(4), Sampling(**{'n_steps': 2, **kw}))
    assert str(e.value) == msg and digits.calls == calls


def test_pool_refresh_rejects_huge_omega_before_generating(digits):
    torch.manual_seed(0)
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    pool = Pool.generate(digits, torch.arange(10), Sampling(n_steps=2))
    before, calls = pool.get_images(slice(None)).clone(), digits.calls
    with pytest.raises(ValueError) as e: pool.refresh(digits, clf, 0.5, Sampling(omega=1e308, n_steps=2))
    assert str(e.value) == "omega must be a finite number in [0, 100.0], got 1e+308"
    assert digits.calls == calls and pool.round == 0 and torch.equal(pool.get_images(slice(None)), before)
    assert not math.isnan(pool.refresh(digits, clf, 0.5, Sampling(omega=0.1, n_steps=2))['mean_entropy_new'])   # a good omega still runs
