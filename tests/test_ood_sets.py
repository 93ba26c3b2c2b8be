"ImageNet-R and ImageNet-A: their 200-class lists, the classes an ImageNet-100 run shares with them, and `extra_test_split` on a fake ImageNet-R."
from conftest import imagenet_layout


def test_class_lists_are_200_imagenet1k_classes_in_1k_order():
    from deliberate_practice.data import IMAGENET_R_WNIDS, IMAGENET_A_WNIDS, IMAGENET1K_WNIDS
    for ood in (IMAGENET_R_WNIDS, IMAGENET_A_WNIDS):
        assert len(ood) == len(set(ood)) == 200
        assert ood == [w for w in IMAGENET1K_WNIDS if w in set(ood)]
    assert len(set(IMAGENET_R_WNIDS) & set(IMAGENET_A_WNIDS)) == 86


def test_imagenet100_shares_19_classes_with_r_and_15_with_a():
    from deliberate_practice.data import IMAGENET_R_WNIDS, IMAGENET_A_WNIDS, IMAGENET100_WNIDS, IMAGENET1K_WNIDS, ood_classes
    in_r, in_a = ood_classes(IMAGENET_R_WNIDS), ood_classes(IMAGENET_A_WNIDS)
    assert (len(in_r), len(in_a), len(set(in_r) & set(in_a))) == (19, 15, 6)
    assert [IMAGENET100_WNIDS.index(w) for w in in_r] == sorted(IMAGENET100_WNIDS.index(w) for w in in_r)   # the run's order
    assert ood_classes(IMAGENET_R_WNIDS, IMAGENET1K_WNIDS) == IMAGENET_R_WNIDS


def test_extra_test_split_on_a_fake_imagenet_r_keeps_the_shared_classes(tmp_path):
    from deliberate_practice.config import DPConfig
    from deliberate_practice.data import IMAGENET_R_WNIDS, IMAGENET100_WNIDS, extra_test_split, ood_classes
    in_r = ood_classes(IMAGENET_R_WNIDS)
    out = [w for w in IMAGENET_R_WNIDS if w not in IMAGENET100_WNIDS]
    five = [out[0], in_r[-1], out[-1], in_r[3], in_r[10]]                       # 3 ImageNet-100 classes, 2 not
    imagenet_layout(tmp_path / 'in100', IMAGENET100_WNIDS, n=1, size=(8, 8), ext='png', splits=('val',))
    imagenet_layout(tmp_path / 'imagenet-r', five, n=2, size=(10, 12), ext='png', splits=('.',))
    cfg = DPConfig(dataset='imagenet100', data_root=str(tmp_path / 'in100'), sd_path='x')
    ds, idx = extra_test_split(cfg, 'r', tmp_path / 'imagenet-r', 16)
    shared = [w for w in IMAGENET100_WNIDS if w in five]
    assert ds.classes == shared == [in_r[3], in_r[10], in_r[-1]]
    assert idx == [IMAGENET100_WNIDS.index(w) for w in shared] == [34, 60, 98]
    assert len(ds) == 6 and sorted(set(ds.targets)) == [0, 1, 2] and ds[0][0].shape == (3, 16, 16)
