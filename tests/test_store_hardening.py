"""A hostile run folder (issue 24, preemption): the writer lock, symbolic links, bit-flipped checkpoints, tampered pool files, shards from
another run, a pool folder outside its run, unreadable scratch files. Each problem is one line that names the file and what is wrong."""
import hashlib, json, multiprocessing, os, shutil, signal, socket, struct, sys, time, zipfile
from functools import partial
from pathlib import Path
import pytest, torch
from safetensors import safe_open
from safetensors.torch import save_file, load_file
from deliberate_practice import runfolder
from deliberate_practice.store import INDEX, LabelledImages, atomic_write, read_index
from deliberate_practice.runfolder import LOCK, CHECKPOINT, open_run_folder, release_run_folder, read_checkpoint, load_part, save_part

FORK = multiprocessing.get_context('fork')    # children share this process's imports: they start in milliseconds

def _one_line(e)->str:
    s = str(e.value); assert '\n' not in s, s; return s

def _dead_pid()->int:
    p = FORK.Process(target=lambda: None); p.start(); p.join(); return p.pid

def _tree(d:Path)->dict: return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob('*')) if p.is_file()}

# --- 1. the run-folder lock ---------------------------------------------------------------------------------------------------------

def _race(d, barrier):
    barrier.wait()                                              # both processes try at the same instant
    try: open_run_folder(d, fresh=False); won = True
    except ValueError: won = False
    time.sleep(0.5)                                             # the winner still holds the lock while the other reports
    sys.exit(0 if won else 1)

def test_two_resumes_at_once_one_wins(tmp_path):
    "A folder left with a dead holder's .lock, two --resume at once: exactly one takes it, every time (the pid-file lock let both in, 30 in 100)."
    dead = _dead_pid()
    for i in range(10):
        d = tmp_path / f'run{i}'; d.mkdir(); (d / LOCK).write_text(json.dumps(dict(pid=dead, host=socket.gethostname())))
        barrier = FORK.Barrier(2)
        ps = [FORK.Process(target=_race, args=(d, barrier)) for _ in range(2)]
        for p in ps: p.start()
        for p in ps: p.join(10)
        assert sorted(p.exitcode for p in ps) == [0, 1], (i, [p.exitcode for p in ps])

def _hold(d, ready):
    open_run_folder(d); ready.set(); time.sleep(60)

def test_kill_9_frees_the_lock(tmp_path, capsys):
    "While a run lives, a second writer gets one line naming it; after kill -9 the folder opens at once, with no take-over, and keeps its .lock file."
    d, ready = tmp_path / 'run', FORK.Event()
    p = FORK.Process(target=_hold, args=(d, ready)); p.start()
    try:
        assert ready.wait(20)
        with pytest.raises(ValueError) as e: open_run_folder(d, fresh=False)
        assert _one_line(e) == (f"out {d} is in use by process {p.pid} on {socket.gethostname()} (lock file {d / LOCK}): "
                                "wait for that run to end, or choose another --out")
    finally: os.kill(p.pid, signal.SIGKILL); p.join()
    assert json.loads((d / LOCK).read_text())['pid'] == p.pid          # the killed run's file is still there
    assert open_run_folder(d, fresh=False) == d
    assert 'taking over' not in capsys.readouterr().err
    release_run_folder(d)
    assert (d / LOCK).exists()                                          # released, not deleted (deleting a flock'ed file races)

def test_garbage_lock_file_is_harmless(tmp_path):
    d = tmp_path / 'run'; d.mkdir(); (d / LOCK).write_bytes(b'\x00\xff not json')
    assert open_run_folder(d, fresh=False) == d
    assert json.loads((d / LOCK).read_text()) == dict(pid=os.getpid(), host=socket.gethostname())
    release_run_folder(d)
    (d / LOCK).write_text('{"pid": 3}')                                 # garbage held by a live process: no name, still refused
    fd = os.open(d / LOCK, os.O_RDWR); runfolder.fcntl.flock(fd, runfolder.fcntl.LOCK_EX)
    try:
        with pytest.raises(ValueError) as e: open_run_folder(d, fresh=False)
        assert f'out {d} is in use by another process (lock file' in _one_line(e)
    finally: os.close(fd)

def test_lock_is_reentrant_and_released(tmp_path):
    d = tmp_path / 'run'
    open_run_folder(d); open_run_folder(d, fresh=False)                 # the same process reopens its folder
    fd = os.open(d / LOCK, os.O_RDWR)
    with pytest.raises(BlockingIOError): runfolder.fcntl.flock(fd, runfolder.fcntl.LOCK_EX | runfolder.fcntl.LOCK_NB)
    release_run_folder(d)                                               # one release frees it
    runfolder.fcntl.flock(fd, runfolder.fcntl.LOCK_EX | runfolder.fcntl.LOCK_NB); os.close(fd)
    release_run_folder(d); assert (d / LOCK).exists()                   # a second release does nothing

def test_lock_after_the_folder_was_deleted(tmp_path):
    "A folder deleted and made again under the same process: its new lock file is locked, not taken as already held."
    d = tmp_path / 'run'; open_run_folder(d); shutil.rmtree(d)
    open_run_folder(d)
    fd = os.open(d / LOCK, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError): runfolder.fcntl.flock(fd, runfolder.fcntl.LOCK_EX | runfolder.fcntl.LOCK_NB)
    finally: os.close(fd); release_run_folder(d)

def test_without_fcntl_the_pid_file_lock(tmp_path, monkeypatch, capsys):
    "Where there is no fcntl (Windows) the pid-file lock stands in: a dead holder's lock is taken over, with a message, and removed on release."
    monkeypatch.setattr(runfolder, 'fcntl', None)
    d = tmp_path / 'run'; d.mkdir(); (d / LOCK).write_text(json.dumps(dict(pid=_dead_pid(), host=socket.gethostname())))
    open_run_folder(d, fresh=False)
    assert 'taking over the lock of process' in capsys.readouterr().err
    (d / LOCK).write_text(json.dumps(dict(pid=1, host=socket.gethostname())))   # pid 1 always runs
    with pytest.raises(ValueError) as e: open_run_folder(d, fresh=False)
    assert 'is in use by process 1 on' in _one_line(e)
    (d / LOCK).write_text(json.dumps(dict(pid=os.getpid(), host=socket.gethostname()))); release_run_folder(d)
    assert not (d / LOCK).exists()

# --- 2. symbolic links and the filesystem root as --out -----------------------------------------------------------------------------

@pytest.mark.parametrize('target,msg', [('real', 'is a symbolic link to {t}: pass the real folder as --out'),
                                        ('/', 'is a symbolic link to /: pass the real folder as --out')])
def test_out_is_a_symlink(tmp_path, target, msg):
    t = tmp_path / target if target == 'real' else Path(target)
    if target == 'real': t.mkdir()
    (tmp_path / 'out').symlink_to(t)
    with pytest.raises(ValueError) as e: open_run_folder(tmp_path / 'out')
    assert _one_line(e) == f"out {tmp_path / 'out'} " + msg.format(t=t)
    assert not (t / LOCK).exists() if target == 'real' else True

@pytest.mark.parametrize('out', ['/', '/tmp/..', '//'])
def test_out_is_the_filesystem_root(out):
    with pytest.raises(ValueError) as e: open_run_folder(out)
    assert _one_line(e) == f"out {Path(out)} is the filesystem root /: pass a run folder below it as --out"

# --- 3. a bit-flipped checkpoint ------------------------------------------------------------------------------------------------------

def _data_offset(path:Path, info:zipfile.ZipInfo)->int:
    "Where member `info`'s data starts: after its local header (30 bytes, then the name and the extra field)."
    raw = path.read_bytes()[info.header_offset:info.header_offset + 30]
    n, m = struct.unpack('<HH', raw[26:30])
    return info.header_offset + 30 + n + m

def test_bit_flipped_checkpoint_is_refused(tmp_path):
    ck, w = tmp_path / CHECKPOINT, torch.randn(1000, generator=torch.Generator().manual_seed(0))
    atomic_write(ck, partial(torch.save, dict(model=dict(w=w), step=3)))
    assert torch.equal(read_checkpoint(ck)['model']['w'], w)
    with zipfile.ZipFile(ck) as z: info = next(i for i in z.infolist() if i.filename.endswith('/data/0'))
    raw = bytearray(ck.read_bytes()); raw[_data_offset(ck, info) + info.file_size // 2] ^= 0x10; ck.write_bytes(raw)
    assert not torch.equal(torch.load(ck, weights_only=True)['model']['w'], w)    # torch.load returns the changed weight without a word
    with pytest.raises(ValueError) as e: read_checkpoint(ck)
    assert _one_line(e) == (f"checkpoint {ck} is corrupted: member {info.filename} fails its CRC check; "
                            "restore the run folder from a copy, or start the run again")

def test_truncated_checkpoint_still_named(tmp_path):
    "A file that is no whole zip skips the CRC check and gets torch.load's message."
    ck = tmp_path / CHECKPOINT; atomic_write(ck, partial(torch.save, dict(step=3))); ck.write_bytes(ck.read_bytes()[:200])
    with pytest.raises(ValueError) as e: read_checkpoint(ck)
    assert f'{ck} is not a readable checkpoint' in _one_line(e)

# --- 4, 5. tampered pool files, shards from another pool ------------------------------------------------------------------------------

def _pool(root, seed=0)->LabelledImages:
    "Six 1x4x4 images in shards of two: three shards."
    g = torch.Generator().manual_seed(seed)
    return LabelledImages(torch.rand(6, 1, 4, 4, generator=g), torch.arange(6) % 3, root=root, shard_size=2)

def _shard(p, images, uid=True):
    "Replace shard file `p` by `images`, keeping its uid (so only the tampering under test is wrong)."
    with safe_open(str(p), framework='pt') as f: meta = f.metadata()
    save_file({'images': images}, str(p), metadata=meta if uid else None)

def _index(p, change):
    ix = json.loads((p / INDEX).read_text()); change(ix); (p / INDEX).write_text(json.dumps(ix))

def _meta(p, change):
    mp = p / read_index(p)['meta']; t = load_file(str(mp)); change(t); save_file(t, str(mp))

def _swap(p, other):
    "Shard 0 replaced by shard 0 of another pool: same name, same shape."
    (p / 'shard-00000000.safetensors').write_bytes((other / 'shard-00000000.safetensors').read_bytes())

S0 = 'shard-00000000.safetensors'
TAMPER = [   # (id, tamper(pool folder, another pool's folder), the message: {p} is the pool folder, {meta} its meta file)
    ('shard of another image shape', lambda p, o: _shard(p / S0, torch.zeros(2, 1, 5, 5, dtype=torch.uint8)),
     'pool shard {p}/' + S0 + ' holds images of shape (1, 5, 5), the index {p}/index.json says (1, 4, 4)'),
    ('shard with fewer rows than the index uses', lambda p, o: _shard(p / S0, torch.zeros(1, 1, 4, 4, dtype=torch.uint8)),
     'pool shard {p}/' + S0 + ' holds 1 images, the index {p}/index.json points at its row 1'),
    ('shard of floats', lambda p, o: _shard(p / S0, torch.zeros(2, 1, 4, 4)), 'pool shard {p}/' + S0 + ' holds F32 images, expected U8 (uint8)'),
    ('shard without images', lambda p, o: save_file({'x': torch.zeros(2)}, str(p / S0)), 'pool shard {p}/' + S0 + ' holds no images tensor'),
    ('shard garbage', lambda p, o: (p / S0).write_bytes(b'garbage' * 10), 'pool file {p}/' + S0 + ' is unreadable'),
    ('shard deleted', lambda p, o: (p / S0).unlink(), 'pool shard {p}/' + S0 + ' is missing (the index {p}/index.json lists it)'),
    ('shard from another pool', lambda p, o: _swap(p, o), 'pool shard {p}/' + S0 + ' has uid {uid}, the index {p}/index.json records {uid0}: it comes from another'),
    ('index not JSON', lambda p, o: (p / INDEX).write_text('{"format": "deliberate_practice.pool",\n "shards": [,'),
     'pool index {p}/index.json is not valid JSON (Expecting value at line 2, column 13)'),
    ('index not UTF-8', lambda p, o: (p / INDEX).write_bytes(b'\xff\xfe{'), 'pool index {p}/index.json is not valid JSON (Expecting value at line 1, column 1)'),
    ('index a list', lambda p, o: (p / INDEX).write_text('[1]'), '{p}/index.json is not a deliberate_practice.pool index (format=None)'),
    ('index without meta and shards', lambda p, o: _index(p, lambda ix: (ix.pop('meta'), ix.pop('shards'))),
     "pool index {p}/index.json lacks the keys ['shards', 'meta']"),
    ('index naming a file outside', lambda p, o: _index(p, lambda ix: ix.update(shards=['../../etc/passwd'])),
     "pool index {p}/index.json: field shards must be a list of shard-NNNNNNNN.safetensors names, got ['../../etc/passwd']"),
    ('index with a bad image_shape', lambda p, o: _index(p, lambda ix: ix.update(image_shape='1x4x4')),
     'pool index {p}/index.json: field image_shape must be a list of positive integers, got 1x4x4'),
    ('meta deleted', lambda p, o: (p / read_index(p)['meta']).unlink(), 'pool meta file {meta} is missing ({p}/index.json names it)'),
    ('meta labels floats', lambda p, o: _meta(p, lambda t: t.update(labels=t['labels'].float())),
     'pool meta file {meta}: labels must be a 1-D integer tensor, got torch.float32 of shape (6,)'),
    ('meta shard shorter than labels', lambda p, o: _meta(p, lambda t: t.update(shard=t['shard'][:5])),
     'pool meta file {meta}: shard has shape (5,), labels (6,) (one entry per image)'),
    ('meta shard index past the list', lambda p, o: _meta(p, lambda t: t['shard'].__setitem__(0, 7)),
     'pool meta file {meta}: shard holds shard indices 0..7, but 3 shards are listed'),
    ('meta without row', lambda p, o: _meta(p, lambda t: t.pop('row')), "pool meta file {meta} lacks the tensors ['row']"),
]

@pytest.mark.parametrize('case,tamper,msg', TAMPER, ids=[c for c, _, _ in TAMPER])
def test_tampered_pool_one_line(case, tamper, msg, tmp_path):
    p, o = _pool(tmp_path / 'pool').root, _pool(tmp_path / 'other', seed=1).root
    uid0 = read_index(p)['uids'][S0]; meta = p / read_index(p)['meta']
    tamper(p, o)
    with pytest.raises((ValueError, OSError)) as e: LabelledImages.load(p)
    uid = read_index(o)['uids'][S0]
    assert msg.format(p=p, meta=meta, uid=uid, uid0=uid0) in _one_line(e)

def test_pool_of_an_older_version_without_uids(tmp_path):
    "An index without uids (written before them) opens, and a swapped shard goes unnoticed there: the check needs the recorded uid."
    p, o = _pool(tmp_path / 'pool').root, _pool(tmp_path / 'other', seed=1).root
    _index(p, lambda ix: ix.pop('uids')); _swap(p, o)
    assert len(LabelledImages.load(p)) == 6

def test_uids_written_copied_and_renewed(tmp_path):
    "Each shard's uid is in its file and in index.json and the state dict; save_store's hard links keep them; compaction writes new ones."
    a = _pool(tmp_path / 'a'); ix = read_index(a.root)
    assert set(ix['uids']) == set(ix['shards']) and len(set(ix['uids'].values())) == 3
    for n, u in ix['uids'].items():
        with safe_open(str(a.root / n), framework='pt') as f: assert f.metadata()['uid'] == u
    assert a.state_dict()['uids'] == ix['uids']
    a.save(tmp_path / 'b')
    assert read_index(tmp_path / 'b')['uids'] == ix['uids'] and torch.equal(LabelledImages.load(tmp_path / 'b').get_images(slice(None)), a.get_images(slice(None)))
    assert os.stat(a.root / ix['shards'][0]).st_ino == os.stat(tmp_path / 'b' / ix['shards'][0]).st_ino
    c = LabelledImages(torch.rand(6, 1, 4, 4), torch.arange(6) % 3, root=tmp_path / 'c', shard_size=4); ix = read_index(c.root)
    c.store.put(torch.tensor([0, 1, 2]), torch.zeros(3, 1, 4, 4)); c._commit()     # shard 0 a quarter alive: its last image moves to a new file
    new = read_index(c.root)
    assert new['uids']['shard-00000001.safetensors'] == ix['uids']['shard-00000001.safetensors']     # untouched: same file, same uid
    assert 'shard-00000000.safetensors' not in new['uids'] and len(new['uids']) == 3 and len(set(new['uids'].values()) - set(ix['uids'].values())) == 2
    assert torch.equal(LabelledImages.load(c.root).get_images(slice(None)), c.get_images(slice(None)))

# --- 6. a checkpoint's pool folder must lie inside its run folder ---------------------------------------------------------------------

def _run(tmp_path, name, seed=0):
    run = tmp_path / name; run.mkdir(); pool = _pool(run / 'pool', seed)
    return run, pool.state_dict(relative_to=run)

def _resume(sd, run): return LabelledImages.__new__(LabelledImages).load_state_dict(sd, relative_to=run)

def test_checkpoint_pool_root_inside_the_run(tmp_path):
    run, sd = _run(tmp_path, 'run'); other, _ = _run(tmp_path, 'other', seed=1)
    before = _tree(other)
    assert len(_resume(sd, run)) == 6
    cases = [({'root': str(other / 'pool')}, f"checkpoint field pool.root is the absolute path {other / 'pool'}: a run's pool lies inside its run folder {run}"),
             ({'root': '../other/pool'}, f"checkpoint field pool.root is '../other/pool', which is not a folder inside the run folder {run}"),
             ({'root': '.'}, f"checkpoint field pool.root is '.', which is not a folder inside the run folder {run}")]
    for change, msg in cases:
        with pytest.raises(ValueError) as e: _resume({**sd, **change}, run)
        assert msg in _one_line(e)
    os.rename(run / 'pool', tmp_path / 'kept'); (run / 'pool').symlink_to(other / 'pool')    # a `pool` link to another run's pool
    with pytest.raises(ValueError) as e: _resume(sd, run)
    assert f"checkpoint field pool.root: pool folder {run / 'pool'} is a symbolic link to {other / 'pool'}" in _one_line(e)
    assert _tree(other) == before                                            # nothing of the other run deleted or written over

def test_checkpoint_pool_fields_checked(tmp_path):
    run, sd = _run(tmp_path, 'run'); _, sd_o = _run(tmp_path, 'other', seed=1)
    cases = [({'uids': {**sd['uids'], S0: sd_o['uids'][S0]}}, f"pool shard {run / 'pool' / S0} has uid {sd['uids'][S0]}, the checkpoint records {sd_o['uids'][S0]}"),
             ({'image_shape': [1, 5, 5]}, f"pool shard {run / 'pool' / S0} holds images of shape (1, 4, 4), the checkpoint says (1, 5, 5)"),
             ({'row': sd['row'] + 1}, 'holds 2 images, the checkpoint points at its row 2'),
             ({'shard': sd['shard'] + 1}, 'checkpoint: pool.shard holds shard indices 1..3, but 3 shards are listed'),
             ({'row': sd['row'][:5]}, 'checkpoint: pool.row must be a 1-D integer tensor of 6 entries (one per image), got torch.int64 of shape (5,)'),
             ({'shards': ['../x']}, "checkpoint field pool.shards must be a list of shard-NNNNNNNN.safetensors names, got ['../x']")]
    for change, msg in cases:
        with pytest.raises(ValueError) as e: _resume({**sd, **change}, run)
        assert msg in _one_line(e), change
    with pytest.raises(ValueError) as e: _resume({k: v for k, v in sd.items() if k != 'shards'}, run)
    assert "checkpoint lacks the fields ['pool.shards']" in _one_line(e)
    assert len(_resume({k: v for k, v in sd.items() if k != 'uids'}, run)) == 6   # a checkpoint written before uids: no uid check

# --- 7. scratch files -----------------------------------------------------------------------------------------------------------------

def _part(tmp_path):
    f = tmp_path / 'scratch' / 'part.safetensors'
    save_part(f, torch.tensor([3, 4]), 7, torch.rand(2, 1, 2, 2), torch.tensor([0.5, 0.25]), 1)
    return f

SCRATCH = [   # (id, change(file), what the warning says)
    ('garbage', lambda f: f.write_bytes(b'not a safetensors file at all'), 'SafetensorError'),
    ('truncated', lambda f: f.write_bytes(f.read_bytes()[:60]), 'SafetensorError'),
    ('empty', lambda f: f.write_bytes(b''), 'SafetensorError'),
    ('no entropy', lambda f: save_file(dict(images=torch.rand(2, 1, 2, 2), labels=torch.tensor([3, 4])), str(f), dict(seed='7', n_nonfinite='1')),
     "no tensors ['entropy']"),
    ('no n_nonfinite', lambda f: save_file(load_file(str(f)), str(f), dict(seed='7')), "KeyError: 'n_nonfinite'"),
    ('lengths differ', lambda f: save_file({**load_file(str(f)), 'entropy': torch.zeros(3)}, str(f), dict(seed='7', n_nonfinite='1')),
     'images, entropy, labels of shapes (2, 1, 2, 2), (3,), (2,)'),
]

@pytest.mark.parametrize('case,change,why', SCRATCH, ids=[c for c, _, _ in SCRATCH])
def test_unusable_scratch_is_regenerated(case, change, why, tmp_path, capsys):
    f = _part(tmp_path); change(f)
    assert load_part(f, torch.tensor([3, 4]), 7) is None
    err = capsys.readouterr().err
    assert err.startswith(f'scratch file {f} is unreadable (') and why in err and err.endswith('); regenerating its images\n') and err.count('\n') == 1, err

def test_scratch_image_shape(tmp_path, capsys):
    f = _part(tmp_path)
    x, ent, n = load_part(f, torch.tensor([3, 4]), 7)                          # the three positional arguments still work
    assert (x.shape, ent.tolist(), n) == ((2, 1, 2, 2), [0.5, 0.25], 1) and capsys.readouterr().err == ''
    assert load_part(f, torch.tensor([3, 4]), 7, image_shape=(1, 2, 2)) is not None
    assert load_part(f, torch.tensor([3, 4]), 7, (3, 2, 2)) is None
    assert capsys.readouterr().err == f'scratch file {f} is unreadable (images of shape (1, 2, 2), expected (3, 2, 2)); regenerating its images\n'
    assert load_part(f, torch.tensor([3, 5]), 7) is None and capsys.readouterr().err == ''   # other labels: regenerated, no warning (a new chunk plan)
