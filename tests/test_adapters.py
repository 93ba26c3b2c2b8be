"Adapters on the tiny Stable Diffusion: a LoRA and a textual inversion load through diffusers, change the images, and reach a pool's spec."
import hashlib
import pytest
import torch
from safetensors.torch import save_file
from deliberate_practice import pool
from deliberate_practice.config import Sampling
from deliberate_practice.generators import StableDiffusionGenerator, load_adapters, tiny_sd_components

peft = pytest.importorskip('peft', reason='diffusers loads LoRA weights through peft')

LABELS, KW = [0, 1], dict(sampling=Sampling(n_steps=2), seed=0)


def tiny_gen(prompts=('a <tiny> tench', 'a goldfish')):
    return StableDiffusionGenerator(**tiny_sd_components(), class_names=['tench', 'goldfish'], prompts=list(prompts))


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "A tiny LoRA (PEFT on the tiny UNet's attention projections, random non-zero B) as diffusers saves one, and a one-vector embedding '<tiny>'."
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    d = tmp_path_factory.mktemp('adapters')
    unet = tiny_sd_components()['unet']
    unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=['to_q', 'to_k', 'to_v', 'to_out.0']))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if 'lora_B' in n: p.copy_(torch.randn(p.shape, generator=g) * 0.5)     # PEFT starts B at 0
    StableDiffusionPipeline.save_lora_weights(d / 'lora', unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))
    save_file({'<tiny>': torch.randn(32, generator=g) * 3}, str(d / 'tiny.safetensors'))
    e = torch.randn(2, 32, generator=g) * 3
    save_file({'<tiny>': e}, str(d / 'tiny2.safetensors'))                            # a two-vector embedding
    save_file({'<tiny>': e[0]}, str(d / 'tiny2_first.safetensors'))                   # its first vector only
    return d


@pytest.fixture(scope='module')
def base(): return tiny_gen().sample(LABELS, **KW)


def test_lora_changes_the_images(files, base):
    gen = load_adapters(tiny_gen(), lora=files / 'lora')
    assert (gen.sample(LABELS, **KW) - base).abs().amax((1, 2, 3)).min() > 1e-2
    assert type(gen.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q) is torch.nn.Linear   # fused: no PEFT layers left
    w = (files / 'lora' / 'pytorch_lora_weights.safetensors').read_bytes()
    assert gen.adapters == dict(lora=hashlib.sha1(w).hexdigest()[:16], lora_scale=1.0, textual_inversion=None)
    assert torch.equal(load_adapters(tiny_gen(), lora=files / 'lora' / 'pytorch_lora_weights.safetensors').sample(LABELS, **KW),
                       gen.sample(LABELS, **KW))                                      # the file itself: the same LoRA


def test_lora_scale_0_is_the_unadapted_model(files, base):
    assert torch.equal(load_adapters(tiny_gen(), lora=files / 'lora', lora_scale=0).sample(LABELS, **KW), base)
    half = load_adapters(tiny_gen(), lora=files / 'lora', lora_scale=0.5).sample(LABELS, **KW)
    full = load_adapters(tiny_gen(), lora=files / 'lora').sample(LABELS, **KW)
    assert 1e-3 < (half - base).abs().max() and 1e-3 < (half - full).abs().max()


def test_textual_inversion_changes_the_prompts_with_its_token(files, base):
    gen = load_adapters(tiny_gen(), textual_inversion=files / 'tiny.safetensors')
    imgs = gen.sample(LABELS, **KW)
    assert (imgs[0] - base[0]).abs().max() > 1e-2                                      # 'a <tiny> tench'
    assert torch.equal(imgs[1], base[1])                                                # 'a goldfish': no token
    assert gen.adapters['textual_inversion'] == hashlib.sha1((files / 'tiny.safetensors').read_bytes()).hexdigest()[:16]


def test_multi_vector_embedding_uses_all_its_vectors(files):
    two = load_adapters(tiny_gen(), textual_inversion=files / 'tiny2.safetensors').sample(LABELS, **KW)
    first = load_adapters(tiny_gen(), textual_inversion=files / 'tiny2_first.safetensors').sample(LABELS, **KW)
    assert (two[0] - first[0]).abs().max() > 1e-3


def test_adapters_reach_the_pool_spec(files):
    s = pool.Sampling()
    plain = pool.pool_spec(tiny_gen(), 8, s, 0)
    lora = pool.pool_spec(load_adapters(tiny_gen(), lora=files / 'lora'), 8, s, 0)
    lora_0 = pool.pool_spec(load_adapters(tiny_gen(), lora=files / 'lora', lora_scale=0), 8, s, 0)
    ti = pool.pool_spec(load_adapters(tiny_gen(), textual_inversion=files / 'tiny.safetensors'), 8, s, 0)
    assert 'adapters' not in plain['generator'] and lora['generator']['adapters']['lora_scale'] == 1.0
    assert pool.spec_problem(plain, plain) is None and pool.spec_problem(lora, lora) is None
    for a, b in [(plain, lora), (lora, plain), (lora, lora_0), (plain, ti)]:
        msg = pool.spec_problem(a, b)
        assert msg and '\n' not in msg and 'another generator' in msg, msg


@pytest.mark.parametrize('field, name, why', [('lora', 'nope.safetensors', 'lora: no file'), ('lora', 'tiny.safetensors', 'lora: '),
                                              ('lora', 'junk.safetensors', 'lora: '), ('textual_inversion', 'nope.pt', 'textual_inversion: no file'),
                                              ('textual_inversion', 'junk.safetensors', 'textual_inversion: ')])
def test_bad_files_give_one_line_errors(files, field, name, why):
    (files / 'junk.safetensors').write_bytes(b'not a safetensors file')
    with pytest.raises(ValueError) as e: load_adapters(tiny_gen(), **{field: files / name})
    assert str(e.value).startswith(why) and name in str(e.value) and '\n' not in str(e.value), str(e.value)


def test_token_in_no_prompt_is_an_error(files):
    with pytest.raises(ValueError, match=r"^textual_inversion: its token '<tiny>' .* is in no prompt") as e:
        load_adapters(tiny_gen(['a tench', 'a goldfish']), textual_inversion=files / 'tiny.safetensors')
    assert '\n' not in str(e.value)


def test_no_adapters_leave_the_generator_alone(files, base):
    gen = tiny_gen()
    assert load_adapters(gen) is gen and not hasattr(gen, 'adapters')
    load_adapters(gen, lora=files / 'lora')
    with pytest.raises(ValueError, match='already carries adapters'): load_adapters(gen, lora=files / 'lora')


def test_the_run_loader_applies_the_configs_adapters(files, tmp_path, base):
    "`GENERATOR_LOADERS['stable-diffusion']` (what `build_parts` and the CLI call) loads the saved model, then `cfg.lora` etc."
    from types import SimpleNamespace
    from deliberate_practice.generators import GENERATOR_LOADERS
    tiny_gen().save_pretrained(tmp_path / 'sd')
    cfg = SimpleNamespace(sd_path=str(tmp_path / 'sd'), image_size=None, gradient_checkpointing=False, guidance_decoder=None, variant=None,
                          lora=str(files / 'lora'), lora_scale=0.0, textual_inversion=str(files / 'tiny.safetensors'))
    gen = GENERATOR_LOADERS['stable-diffusion'](cfg, ['tench', 'goldfish'], ['a <tiny> tench', 'a goldfish'], 'cpu')
    assert gen.adapters['lora_scale'] == 0.0 and gen.adapters['textual_inversion'] is not None
    ti = load_adapters(tiny_gen(), textual_inversion=files / 'tiny.safetensors').sample(LABELS, **KW)
    assert torch.allclose(gen.sample(LABELS, **KW), ti, atol=1e-5)                   # scale 0: the textual inversion alone
