"""The package's shape: the index diagram is true to the imports, notebooks import only earlier notebooks' modules."""
import ast, json, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG, NBS = ROOT / 'deliberate_practice', ROOT / 'nbs'
NOT_MODULES = ('__init__', '_modidx')   # nbdev's package files; `__main__` (python -m) is a module of its own notebook


def _imported(node, tree)->list:
    "The package modules an import statement names."
    if isinstance(node, ast.ImportFrom):
        if node.level == 1: return [node.module.split('.')[0]] if node.module else [a.name for a in node.names]
        if node.module and node.module.startswith('deliberate_practice.'): return [node.module.split('.')[1]]
        if node.module == 'deliberate_practice': return [a.name for a in node.names]
    if isinstance(node, ast.Import): return [a.name.split('.')[1] for a in node.names if a.name.startswith('deliberate_practice.')]
    return []


def module_imports()->dict:
    "{module: (modules imported at module level, modules imported inside a function only)} of the package."
    out = {}
    for p in sorted(PKG.glob('*.py')):
        if p.stem in NOT_MODULES: continue
        tree = ast.parse(p.read_text()); top, lazy = set(), set()
        for node in ast.walk(tree):
            for m in _imported(node, tree): (top if node in tree.body else lazy).add(m)
        out[p.stem] = (top - {p.stem}, lazy - top - {p.stem})
    return out


def flow_edges(src:str)->list:
    "The arrows `a -->|label| b` of the index's mermaid diagram, as (a, b)."
    drawn = re.search(r'```mermaid\n(.*?)\n```', src, re.S).group(1)
    return re.findall(r'^\s*(\w+)\s*-\.?->(?:\|[^|]*\|)?\s*(\w+)\s*$', drawn, re.M)


def depends(imports:dict)->set:
    "(a, b) for every module b that uses a: imports it, directly or through others, at module level or in a function."
    direct = {(a, b) for b, (top, lazy) in imports.items() for a in top | lazy}
    closure = set(direct)
    while True:
        more = {(a, c) for a, b in closure for b2, c in direct if b == b2} - closure
        if not more: return closure
        closure |= more


def test_index_diagram_is_true():
    "The index's data-flow diagram names real modules, and each arrow joins two modules one of which uses the other."
    cells = json.loads((NBS / 'index.ipynb').read_text())['cells']
    edges = flow_edges('\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown'))
    imports = module_imports()
    assert len(edges) >= 8, edges
    unknown = sorted({m for e in edges for m in e} - set(imports))
    assert not unknown, f"the index diagram names no such modules: {unknown}"
    dep = depends(imports)
    loose = [(a, b) for a, b in edges if (a, b) not in dep and (b, a) not in dep]
    assert not loose, f"arrows of the index diagram between modules that do not use each other: {loose}"
    assert {'generators', 'pool', 'trainer', 'guidance', 'ddim'} <= {m for e in edges for m in e}, "the method is drawn"


def test_flow_edges_finds_bad_arrows():
    "The check reads labelled and dotted arrows, and tells modules that use each other from ones that do not."
    edges = flow_edges('```mermaid\ngraph LR\n  ddim -->|x| guidance\n  cli -.-> ddim\n```')
    assert edges == [('ddim', 'guidance'), ('cli', 'ddim')]
    dep = depends(module_imports())
    assert ('ddim', 'guidance') in dep and ('ddim', 'trainer') in dep      # trainer uses ddim through guidance
    assert ('cli', 'ddim') not in dep and ('ddim', 'cli') in dep


def notebook_order(name:str)->tuple:
    "Where a notebook comes: `06_store` (6, ''), then `06a_runfolder` (6, 'a'), then `07_pool` (7, '')."
    return int(name[:2]), name[2:name.index('_')]


def test_notebooks_import_only_earlier_notebooks():
    "Each notebook (exported code, examples and tests alike) uses only modules whose notebooks come before it."
    number, cells = {}, {}
    for p in sorted(NBS.glob('[0-9][0-9]*_*.ipynb')):
        srcs = [''.join(c['source']) for c in json.loads(p.read_text())['cells'] if c['cell_type'] == 'code']
        mod = next(re.search(r'#\|\s*default_exp\s+(\w+)', s).group(1) for s in srcs if re.search(r'#\|\s*default_exp', s))
        number[mod], cells[mod] = notebook_order(p.name), srcs
    assert sorted(number) == sorted(module_imports()), "one notebook per module"
    late = {}
    for mod, srcs in cells.items():
        used = {m for s in srcs for node in ast.walk(ast.parse(re.sub(r'(?m)^\s*[!%].*$', '', s))) for m in _imported(node, None)}
        bad = sorted(m for m in used - {mod} if number.get(m, (-1, '')) > number[mod])
        if bad: late[mod] = bad
    assert not late, f"notebooks import modules of later notebooks: {late}"


def test_no_private_names_across_modules():
    "A module imports only public names of another (its underscore names are its own business)."
    bad = []
    for p in sorted(PKG.glob('*.py')):
        if p.stem in NOT_MODULES: continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and _imported(node, None):
                bad += [f"{p.stem} imports {a.name} from {node.module}" for a in node.names if a.name.startswith('_')]
    assert not bad, bad


def test_exported_cells_are_small():
    "About one definition per exported cell: the median exported cell has at most 10 lines of code."
    sizes = []
    for p in sorted(NBS.glob('[0-9][0-9]*_*.ipynb')):
        for c in json.loads(p.read_text())['cells']:
            src = ''.join(c['source'])
            if c['cell_type'] == 'code' and re.search(r'^#\|\s*export\s*$', src, re.M) and 'default_exp' not in src:
                sizes.append(sum(1 for l in src.splitlines() if l.strip() and not l.startswith('#|')))
    sizes.sort()
    assert sizes[len(sizes) // 2] <= 10, f"median exported cell: {sizes[len(sizes) // 2]} lines"


def test_exported_cells_come_with_examples():
    "No more than 2 exported cells in a row without an example or test between them."
    long = {}
    for p in sorted(NBS.glob('[0-9][0-9]*_*.ipynb')):
        kinds = ''
        for c in json.loads(p.read_text())['cells']:
            src = ''.join(c['source'])
            kinds += 'E' if c['cell_type'] == 'code' and re.search(r'^#\|\s*export\s*$', src, re.M) and 'default_exp' not in src else \
                     ('T' if c['cell_type'] == 'code' else '')
        runs = [len(r) for r in re.findall('E+', kinds)]
        if max(runs, default=0) > 2: long[p.name] = max(runs)
    assert not long, f"exported cells in a row without an example: {long}"
