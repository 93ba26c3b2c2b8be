"Shared test hooks and fixtures: `one_thread`; the bad-input suite's and the preemption suite's tallies are printed at the end of the run (CI shows them)."

BAD_INPUTS = []   # (case id, gave its one-line message?) appended by tests/test_bad_inputs.py
PREEMPTION = []   # one dict per kill-and-resume case of tests/test_preemption.py: run, stage, signal, identical, redone
import pytest

@pytest.fixture(scope='module')
def one_thread():
    "One torch thread for a module of tiny models: on a shared 2-core machine several times faster than two (results do not depend on it)."
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def pytest_terminal_summary(terminalreporter):
    if BAD_INPUTS:
        ok = sum(good for _, good in BAD_INPUTS)
        terminalreporter.write_line(f"bad-input suite: {len(BAD_INPUTS)} inputs tried, {ok} gave their one-line message"
                                    + ('' if ok == len(BAD_INPUTS) else f"; not: {', '.join(c for c, good in BAD_INPUTS if not good)}"))

    if PREEMPTION:
        same, stages = sum(c['identical'] for c in PREEMPTION), sorted({c['stage'] for c in PREEMPTION})
        terminalreporter.write_line(
            f"preemption suite: {len(PREEMPTION)} kills ({sum(c['signal'] == 'KILL' for c in PREEMPTION)} kill -9, {sum(c['signal'] == 'TERM' for c in PREEMPTION)} SIGTERM) "
            f"at {len(stages)} stages ({', '.join(stages)}) of {len({c['run'] for c in PREEMPTION})} runs; {same} resumed identical to the uninterrupted run; "
            f"images sampled twice: {sum(c['redone'] for c in PREEMPTION)} in all, at most {max(c['redone'] for c in PREEMPTION)} in one case"
            + ('' if same == len(PREEMPTION) else f"; not identical: {', '.join(c['run'] + '/' + c['stage'] + '/' + c['signal'] for c in PREEMPTION if not c['identical'])}"))

def imagenet_layout(root, wnids, n:int=1, size=(20, 30), ext:str='JPEG', splits=('train', 'val')):
    "A tiny ImageNet root (or folder dataset) for tests: `splits` with `n` random images in each class folder."
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in splits:
        for w in wnids:
            (root / split / w).mkdir(parents=True)
            for i in range(n): Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / w / f'{w}_{i}.{ext}')
