"""Stable Diffusion folders in a diffusers weight variant (`variant="fp16"`: only `*.fp16.safetensors`): `--variant fp16` loads them,
and without it the folder check names the missing plain weights and the flag to pass (issue 27)."""
import copy, json, os, subprocess
import pytest, torch
from conftest import imagenet_layout
from deliberate_practice.config import DPConfig
from deliberate_practice.generators import (SD_SUBFOLDERS, StableDiffusionGenerator, check_sd_folder, sd_weights, tiny_sd_components,
                                            weight_problems)

ENV = dict(os.environ, PYTHONWARNINGS='default', OMP_NUM_THREADS='1')
CLASSES = ['blue_jay', 'owl', 'red_kite']
FP16 = ['unet/diffusion_pytorch_model.fp16.safetensors', 'vae/diffusion_pytorch_model.fp16.safetensors', 'text_encoder/model.fp16.safetensors']


def _save(gen, path, dtype=torch.float16, **kw):
    "Save `gen`'s components (copies, cast to `dtype`) as diffusers' StableDiffusionPipeline does, with `kw` (variant, safe_serialization)."
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline(**{k: copy.deepcopy(getattr(gen, k)) for k in SD_SUBFOLDERS}, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(dtype).save_pretrained(path, **kw)
    return path


def _weights(path): return sorted(str(f.relative_to(path)) for f in path.rglob('*') if f.suffix in ('.safetensors', '.bin'))


@pytest.fixture(scope='module')
def gen(): return StableDiffusionGenerator(**tiny_sd_components(seed=3), class_names=CLASSES)


@pytest.fixture(scope='module')
def parts(tmp_path_factory, gen):
    "A 3-class bird folder (val/ and test/, 2 images a class) and the tiny SD model saved in the fp16 variant layout only."
    root = tmp_path_factory.mktemp('variant')
    imagenet_layout(root / 'birds', CLASSES, n=2, size=(24, 20), ext='png', splits=('val', 'test'))
    _save(gen, root / 'sd', variant='fp16')
    return root


def test_saved_folder_holds_only_fp16_weights(parts):
    assert _weights(parts / 'sd') == sorted(FP16)


def test_variant_loads_the_saved_weights(parts, gen):
    "With variant='fp16' every component holds exactly the saved fp16 numbers (here upcast to float32 on the CPU)."
    g = StableDiffusionGenerator.from_pretrained(parts / 'sd', CLASSES, variant='fp16', device='cpu')
    assert g.dtype == torch.float32
    for k in ('unet', 'vae', 'text_encoder'):
        ours, saved = getattr(g, k).state_dict(), getattr(gen, k).state_dict()
        assert list(ours) == list(saved)
        assert all(torch.equal(ours[n], saved[n].half().float()) for n in saved), k
    w = g.unet.conv_in.weight
    assert not torch.equal(w, gen.unet.conv_in.weight) and (w - gen.unet.conv_in.weight).abs().max() < 1e-3   # rounded to fp16, no more
    assert g.scheduler.config.set_alpha_to_one is False and type(g.scheduler).__name__ == 'DDIMScheduler'   # its own scheduler config, as DDIM


def test_variant_keeps_the_pool_identity(parts, gen):
    "The variant is no part of a pool's spec: `generator_id` takes the fp16-rounded weights as the same model (07_pool), a retrained one not."
    from deliberate_practice.config import Sampling
    from deliberate_practice.pool import pool_spec, spec_problem
    g16 = StableDiffusionGenerator.from_pretrained(parts / 'sd', CLASSES, variant='fp16')
    spec = lambda g: pool_spec(g, 6, Sampling(), seed=0)
    assert spec(g16)['generator']['weights'] != spec(gen)['generator']['weights']       # the rounding shows in the recorded weights
    assert spec_problem(spec(gen), spec(g16)) is None and spec_problem(spec(g16), spec(gen)) is None
    other = StableDiffusionGenerator(**tiny_sd_components(seed=4), class_names=CLASSES)
    assert spec_problem(spec(other), spec(g16)).startswith('it was made by another generator')


def test_folder_check_names_the_variant(parts):
    sd = parts / 'sd'
    assert check_sd_folder(sd)[1] == [f"sd_path {str(sd)!r} has only fp16 weights ({', '.join(FP16)}): pass --variant fp16"]
    cfgs, problems = check_sd_folder(sd, 'fp16')
    assert problems == [] and sorted(cfgs) == sorted(SD_SUBFOLDERS)
    with pytest.raises(ValueError, match='pass --variant fp16'): StableDiffusionGenerator.from_pretrained(sd, CLASSES)


def test_variant_the_folder_lacks(tmp_path, gen):
    "A plain folder asked for fp16: diffusers would stop ('no such modeling files'); the check says so with the files and the fix."
    sd = _save(gen, tmp_path / 'sd', dtype=torch.float32)
    assert check_sd_folder(sd)[1] == []
    assert check_sd_folder(sd, 'fp16')[1] == [f"sd_path {str(sd)!r} has no fp16 weights ({', '.join(FP16)}): drop --variant to load its plain weights"]
    with pytest.raises(ValueError, match='has no fp16 weights'): StableDiffusionGenerator.from_pretrained(sd, CLASSES, variant='fp16')


def test_mixed_folder_loads_plain_where_no_variant(tmp_path, gen):
    "As diffusers: a component without variant files loads its plain ones (here the text encoder)."
    sd = _save(gen, tmp_path / 'sd', variant='fp16')
    (sd / FP16[2]).unlink(); _save(gen, tmp_path / 'plain', dtype=torch.float32)
    (tmp_path / 'plain' / 'text_encoder' / 'model.safetensors').rename(sd / 'text_encoder' / 'model.safetensors')
    assert sd_weights(sd, 'fp16')['text_encoder'] == 'text_encoder/model.safetensors' and weight_problems(sd, 'fp16') == []
    g = StableDiffusionGenerator.from_pretrained(sd, CLASSES, variant='fp16')
    te = gen.text_encoder.state_dict()
    assert all(torch.equal(v, te[n]) for n, v in g.text_encoder.state_dict().items())   # float32, not rounded
    assert torch.equal(g.unet.conv_in.weight, gen.unet.conv_in.weight.half().float())


@pytest.mark.parametrize('variant', [None, 'fp16'])
def test_bin_weights_load_without_diffusers_fallback(tmp_path, gen, variant):
    "Only .bin files: read as such (use_safetensors=False), without diffusers' failed safetensors try and its 'unsafe serialization' lines."
    from safetensors.torch import load_file
    sd = _save(gen, tmp_path / 'sd', variant=variant, safe_serialization=False)
    te = sd / 'text_encoder' / ('model.fp16.safetensors' if variant else 'model.safetensors')   # transformers 5 writes safetensors only
    torch.save(load_file(te), sd / 'text_encoder' / ('pytorch_model.fp16.bin' if variant else 'pytorch_model.bin')); te.unlink()
    assert all(f.endswith('.bin') for f in _weights(sd)) and check_sd_folder(sd, variant)[1] == []
    r = subprocess.run(['python', '-c', 'import sys; from deliberate_practice.generators import StableDiffusionGenerator as G; '
                        'G.from_pretrained(sys.argv[1], ["a"], variant=sys.argv[2] or None)', str(sd), variant or ''],
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == '', r.stderr[-2000:]            # diffusers' logger writes to the stderr it found at import
    g = StableDiffusionGenerator.from_pretrained(sd, CLASSES, variant=variant)
    assert torch.equal(g.vae.decoder.conv_out.weight, gen.vae.decoder.conv_out.weight.half().float())


def test_config_field():
    assert DPConfig(variant='fp16').variant == 'fp16' and DPConfig().variant is None
    for bad, msg in (('', "variant must be a non-empty string, got ''"), ('fp16.safetensors', "variant must be a weight-file infix such as 'fp16'")):
        with pytest.raises(ValueError, match=msg): DPConfig(variant=bad)


def _train(parts, out, *extra):
    return subprocess.run(['dp-train', '--dataset', 'folder', '--data-root', str(parts / 'birds'), '--sd-path', str(parts / 'sd'), '--out', str(out),
                           '--epochs', '1', '--pool-size', '4', '--device', 'cpu', '--mixed-precision', 'no', '--model', 'test_vit', '--image-size', '16',
                           '--batch-size', '2', '--n-steps', '2', '--num-workers', '0', '--quiet', *extra], env=ENV, capture_output=True, text=True, timeout=300)


def test_run_with_variant(parts, tmp_path):
    "dp-train on the fp16-only folder: with --variant fp16 it runs (no line on stderr); without, one line naming the flag."
    r = _train(parts, tmp_path / 'run', '--variant', 'fp16')
    assert r.returncode == 0 and r.stderr.strip() == '', r.stderr[-3000:]
    fin = json.loads((tmp_path / 'run' / 'final.json').read_text())
    assert fin['config']['variant'] == 'fp16' and fin['pool_size'] == 4 and 0 <= fin['val_acc'] <= 1
    r = _train(parts, tmp_path / 'plain')
    assert r.returncode != 0 and 'has only fp16 weights' in r.stderr and 'pass --variant fp16' in r.stderr, r.stderr[-3000:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def _dry(parts, tmp_path, *extra):
    return subprocess.run(['dp-train', '--dataset', 'folder', '--data-root', str(parts / 'birds'), '--sd-path', str(parts / 'sd'), '--device', 'cpu',
                           '--out', str(tmp_path / 'run'), '--dry-run', *extra], env=ENV, capture_output=True, text=True, timeout=300)


def test_dry_run_without_variant_names_the_weights(parts, tmp_path):
    r = _dry(parts, tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"dp-train: dry run: sd_path {str(parts / 'sd')!r} has only fp16 weights ({', '.join(FP16)}): pass --variant fp16"]


def test_dry_run_with_variant_passes(parts, tmp_path):
    r = _dry(parts, tmp_path, '--variant', 'fp16')
    assert r.returncode == 0, r.stderr
