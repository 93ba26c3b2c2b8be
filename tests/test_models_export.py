"""A trained classifier leaves the package as a timm checkpoint folder (issue 17): `export_timm` writes model.safetensors + config.json,
and timm alone opens it again with the same logits and the same test accuracy."""
import copy, json
import pytest, torch, timm
from safetensors.torch import load_file
from timm.data import resolve_data_config
from timm.utils import ModelEmaV3
from deliberate_practice.data import digits_splits
from deliberate_practice.models import NormalizedClassifier, accuracy, create_classifier, export_timm, fit_classifier, load_exported

def normalize_as_timm(net, x):
    "x in [0, 1] normalized with the mean and std of timm's own data config for `net` (what a timm user would do)."
    dc = resolve_data_config(model=net)
    return (x - torch.tensor(dc['mean']).view(1, -1, 1, 1)) / torch.tensor(dc['std']).view(1, -1, 1, 1)

def reopen(folder):
    "The folder opened the documented way: config.json's architecture, model_args and pretrained_cfg, checkpoint_path= the weights."
    cfg = json.loads((folder / 'config.json').read_text())
    pc = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg['pretrained_cfg'].items() if k in ('input_size', 'mean', 'std')}
    net = timm.create_model(cfg['architecture'], checkpoint_path=str(folder / 'model.safetensors'), pretrained_cfg_overlay=pc, **cfg['model_args'])
    return net.eval(), cfg

@pytest.fixture(scope='module')
def digits(): return digits_splits()

def test_digits_cnn_round_trip(tmp_path, digits):
    (xg, yg), (xt, yt) = digits['gen'], digits['test']
    torch.manual_seed(0)
    clf = fit_classifier(create_classifier('digits_cnn', 10, in_chans=1, img_size=8), xg, yg, epochs=2, seed=0)
    acc = accuracy(clf, xt, yt)
    assert acc > 0.5                                          # trained (chance 0.1): a wrong export could not match it by luck
    assert export_timm(clf, tmp_path / 'model') == tmp_path / 'model'
    sd = load_file(tmp_path / 'model' / 'model.safetensors')
    assert sorted(sd) == sorted(clf.model.state_dict()) and not any(k.startswith('model.') for k in sd)
    net, cfg = reopen(tmp_path / 'model')
    assert (cfg['architecture'], cfg['num_classes'], cfg['model_args']['in_chans']) == ('digits_cnn', 10, 1)
    assert cfg['pretrained_cfg']['input_size'] == [1, 8, 8] and cfg['pretrained_cfg']['mean'] == [0.5]
    with torch.no_grad():
        ref, out = clf(xt), net(normalize_as_timm(net, xt))
        assert torch.equal(out, ref), (out - ref).abs().max()
        assert torch.equal(load_exported(tmp_path / 'model')(xt), ref)
    assert accuracy(load_exported(tmp_path / 'model'), xt, yt) == acc
    assert (out.argmax(1) == yt).sum().item() / len(yt) == acc

def test_ema_copy_exports(tmp_path, digits):
    "The trainer's eval model with EMA on is `ModelEmaV3(...).module`, a deep copy: it keeps model_args and exports alone."
    (xg, yg), (xt, _) = digits['gen'], digits['test']
    torch.manual_seed(1)
    clf = create_classifier('digits_cnn', 10, in_chans=1)
    ema = ModelEmaV3(clf, decay=0.5)
    fit_classifier(clf, xg[:128], yg[:128], epochs=1, seed=1); ema.update(clf)
    export_timm(ema.module, tmp_path / 'model')
    with torch.no_grad():
        assert torch.equal(load_exported(tmp_path / 'model')(xt), ema.module.eval()(xt))
        assert not torch.equal(ema.module(xt), clf(xt))       # the EMA's weights were written, not the trained model's

def test_vit_round_trip(tmp_path):
    torch.manual_seed(0)
    clf = create_classifier('test_vit', 7, in_chans=3, img_size=32).eval()
    export_timm(clf, tmp_path / 'vit', label_names=list('abcdefg'))
    net, cfg = reopen(tmp_path / 'vit')
    assert cfg['pretrained_cfg']['input_size'] == [3, 32, 32] and cfg['label_names'] == list('abcdefg')
    assert 'tag' not in cfg['pretrained_cfg']                  # test_vit's source tag does not describe these weights
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(net(normalize_as_timm(net, x)), clf(x))
        assert torch.equal(timm.create_model(f"local-dir:{tmp_path / 'vit'}", pretrained=True).eval()(normalize_as_timm(net, x)), clf(x))

def test_resnet_one_channel_round_trip(tmp_path):
    "A ResNet takes no img_size, and on one channel its ImageNet statistics are averaged: config.json must carry the averaged ones."
    torch.manual_seed(0)
    clf = create_classifier('resnet18', 3, in_chans=1, img_size=16).eval()
    assert clf.model_args == dict(num_classes=3, in_chans=1)
    export_timm(clf, tmp_path / 'r')
    net, cfg = reopen(tmp_path / 'r')
    assert cfg['pretrained_cfg']['mean'] == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    assert cfg['pretrained_cfg']['input_size'] == [1, 224, 224]
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    local = timm.create_model(f"local-dir:{tmp_path / 'r'}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(net(normalize_as_timm(net, x)), clf(x))
        assert torch.equal(local(normalize_as_timm(local, x)), clf(x))
        assert torch.equal(load_exported(tmp_path / 'r')(x), clf(x))

def test_bad_inputs(tmp_path):
    clf = create_classifier('digits_cnn', 10, in_chans=1)
    with pytest.raises(ValueError, match='NormalizedClassifier'): export_timm(clf.model, tmp_path / 'a')
    with pytest.raises(ValueError, match='model_args'): export_timm(NormalizedClassifier(clf.model, (0.5,), (0.5,)), tmp_path / 'b')
    with pytest.raises(FileNotFoundError, match='model.safetensors'):
        export_timm(clf, tmp_path / 'c'); (tmp_path / 'c' / 'model.safetensors').unlink(); load_exported(tmp_path / 'c')
    cfg = json.loads((tmp_path / 'c' / 'config.json').read_text())
    (tmp_path / 'd').mkdir(); export_timm(clf, tmp_path / 'd')
    (tmp_path / 'd' / 'config.json').write_text(json.dumps(cfg | dict(architecture='not_a_net')))
    with pytest.raises(ValueError, match="'not_a_net'.*import"): load_exported(tmp_path / 'd')
