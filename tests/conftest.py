"Shared test hooks: the bad-input suite's tally is printed at the end of the run (CI shows it)."

BAD_INPUTS = []   # (case id, gave its one-line message?) appended by tests/test_bad_inputs.py

def pytest_terminal_summary(terminalreporter):
    if BAD_INPUTS:
        ok = sum(good for _, good in BAD_INPUTS)
        terminalreporter.write_line(f"bad-input suite: {len(BAD_INPUTS)} inputs tried, {ok} gave their one-line message"
                                    + ('' if ok == len(BAD_INPUTS) else f"; not: {', '.join(c for c, good in BAD_INPUTS if not good)}"))


def imagenet_layout(root, wnids, n:int=1, size=(20, 30), ext:str='JPEG', splits=('train', 'val')):
    "A tiny ImageNet root (or folder dataset) for tests: `splits` with `n` random images in each class folder."
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in splits:
        for w in wnids:
            (root / split / w).mkdir(parents=True)
            for i in range(n): Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / w / f'{w}_{i}.{ext}')
