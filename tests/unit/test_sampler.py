from image_classifier.data.datasets import ResumableSampler


def test_resume_sees_exactly_the_unseen_samples():
    full = ResumableSampler(100, seed=3, shuffle=True)
    full.set_epoch(4)
    order = list(full)
    resumed = ResumableSampler(100, seed=3, shuffle=True)
    resumed.set_epoch(4, skip=30)
    assert list(resumed) == order[30:] and len(resumed) == 70


def test_epochs_differ_and_ranks_partition():
    a = ResumableSampler(10, seed=0, shuffle=True)
    a.set_epoch(0)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(list(a)) == list(range(10))
    shards = []
    for rank in range(3):
        s = ResumableSampler(10, seed=0, shuffle=True, rank=rank, world_size=3)
        s.set_epoch(0)
        shards.append(list(s))
    assert {len(s) for s in shards} == {4} and set().union(*shards) == set(range(10))
    evals = [list(ResumableSampler(10, seed=0, shuffle=False, rank=r, world_size=3, pad=False)) for r in range(3)]
    assert sorted(i for s in evals for i in s) == list(range(10))
