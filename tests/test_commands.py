"Every `dp-train` / `dp-reproduce` command the README and the notebooks show resolves, through the real parsers, to the configuration it claims (`--print-config`)."
import inspect, io, json, re, shlex
from contextlib import redirect_stdout
from pathlib import Path
import pytest
from deliberate_practice import trainer
from deliberate_practice.ablation import ROWS, SCALES, COVERAGE_ROWS, scale_rows
from deliberate_practice.cli import dp_train, parse_args, dp_reproduce, build_reproduce_parser

ROOT = Path(__file__).parents[1]
FENCE = re.compile(r'^```(\w*)\n(.*?)^```', re.S | re.M)   # (language, body) of each fenced block, in order

def _texts():
    "(source name, markdown text) of the README, of every markdown page under nbs/ and of every markdown cell of every notebook."
    yield 'README.md', (ROOT / 'README.md').read_text()
    for page in sorted((ROOT / 'nbs').glob('*.md')): yield page.name, page.read_text()
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        for c in json.loads(nb.read_text())['cells']:
            if c['cell_type'] == 'markdown': yield nb.name, ''.join(c['source'])

def shown_commands()->list:
    "(source, command name, argv) of every dp-train / dp-reproduce line in a fenced code block; launcher prefixes, comments and a trailing & dropped."
    out = []
    for src, text in _texts():
        for lang, block in FENCE.findall(text):
            if lang not in ('', 'sh', 'bash', 'shell'): continue           # ```text: printed output, not commands
            for line in block.replace('\\\n', ' ').splitlines():
                m = re.search(r'\b(dp-train|dp-reproduce)\b(.*)', line.split(' # ')[0])
                if not m or '"$(command' in line: continue
                out.append((src, m.group(1), shlex.split(m.group(2).replace('$SEED', '1').rstrip().removesuffix('&'))))   # a job in the background
    return out

COMMANDS = shown_commands()

def test_commands_found():
    srcs = {s for s, _, _ in COMMANDS}
    pages = {'imagenet.md', 'own_classes.md', 'preemption.md', 'pool_data.md', 'setup.md'}
    assert {'README.md', 'index.ipynb', '08_trainer.ipynb', '09_ablation.ipynb'} | pages <= srcs, srcs
    assert sum(c == 'dp-train' for _, c, _ in COMMANDS) >= 6 and sum(c == 'dp-reproduce' for _, c, _ in COMMANDS) >= 6

def _printed(fn, *a, **kw):
    with redirect_stdout(io.StringIO()) as f: fn(*a, **kw)
    return json.loads(f.getvalue())

def _reproduce_configs(argv)->list: return _printed(dp_reproduce, [*argv, '--print-config'])

IMAGENET = dict(imagenet100=65_000, imagenet1k=650_000)

@pytest.mark.parametrize('src,cmd,argv', COMMANDS, ids=[f"{s}: {c} {' '.join(a)}"[:90] for s, c, a in COMMANDS])
def test_command_resolves_to_what_it_claims(src, cmd, argv, tmp_path):
    if cmd == 'dp-train':
        c = _printed(dp_train, [*argv, '--print-config'])
        kw, ns = parse_args([*argv, '--print-config'])
        dataset = kw.get('dataset', trainer.PRESETS.get(getattr(ns, 'preset', None), {}).get('dataset', 'digits'))   # --preset folder-cpu: the folder dataset
        assert c == trainer.preset(getattr(ns, 'preset', dataset), **kw).to_dict()
        assert c['dataset'] == dataset
        if dataset in IMAGENET:
            assert (c['pool_size'], c['model'], c['omega'], c['cfg_scale'], c['patience']) == (IMAGENET[dataset], 'vit_base_patch16_224', 0.05, 4.0, 8)
            assert (c['device'], c['mixed_precision'], c['image_size']) == ('cuda', 'bf16', 224)
        elif dataset == 'digits': assert c == trainer.DPConfig(**kw).to_dict()   # digits: the DPConfig defaults, which are the reproduction's dp-p8-100 row
        return
    if '--plot' in argv: return                                            # redraws saved results: no configuration
    cfgs = _reproduce_configs(argv)
    ns = build_reproduce_parser().parse_args(argv)
    rows = ns.rows or (list(COVERAGE_ROWS) if ns.coverage else scale_rows(ns.scale, **{k: getattr(ns, k) for k in ('data_root', 'sd_path') if getattr(ns, k)}))
    seeds = ns.seeds or list(dict.fromkeys(c['seed'] for c in cfgs))                              # default seeds: dp-reproduce's own
    if ns.quick and not ns.seeds: assert len(seeds) == 1
    assert [(c['row'], c['seed']) for c in cfgs] == [(r, int(s)) for s in seeds for r in rows]
    assert {c['dataset'] for c in cfgs} == {SCALES[ns.scale].get('dataset', 'digits')}
    for c in cfgs:
        if c['row'] == 'dp-p8-100' and not ns.quick:                      # the scale's dp-p8-100 row is its dp-train preset
            paths = {k: c[k] for k in ('data_root', 'sd_path', 'device', 'seed', 'test_every')}
            assert {k: v for k, v in c.items() if k != 'row'} == trainer.preset(ns.scale, **paths).to_dict()
            assert c['test_every'] == 0                                       # rows score the test split at the end only
        if ns.scale in IMAGENET: assert c['pool_size'] == IMAGENET[ns.scale] and c['model'] == 'vit_base_patch16_224'
