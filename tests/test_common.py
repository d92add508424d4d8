from common import batch_at


def epoch(n, batch_size, e, seed):
    per_epoch = n // batch_size
    return [batch_at(n, batch_size, k, seed) for k in range(e * per_epoch, (e + 1) * per_epoch)]


def test_batches_cover_each_epoch_once():
    for n, batch_size in ((100, 10), (103, 10)):
        batches = epoch(n, batch_size, 0, seed=1)
        seen = [i for b in batches for i in b]
        assert all(len(b) == batch_size for b in batches)
        assert len(seen) == len(set(seen)) == n // batch_size * batch_size  # a partial last batch is dropped
        assert epoch(n, batch_size, 1, seed=1) != batches  # a new shuffle every epoch
        assert epoch(n, batch_size, 0, seed=2) != batches
