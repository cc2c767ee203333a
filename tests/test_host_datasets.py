"""host/datasets.py: aeon's shipped classification sets by name, normalisation, variable lengths, errors."""
import aeon.datasets
import numpy as np
import pytest

from echoboard.host.datasets import available_datasets, load_dataset


def test_available_lists_shipped_classification_sets_only():
    names = available_datasets()
    assert {"BasicMotions", "JapaneseVowels", "GunPoint"} <= set(names)
    assert "Airline" not in names  # a forecasting series, no labels


def test_basic_motions_shapes_labels_and_training_statistics():
    d = load_dataset("BasicMotions")
    assert d.train.x.shape == (40, 100, 6) and d.test.x.shape == (40, 100, 6)
    assert np.all(d.train.lengths == 100)
    assert d.classes == ("badminton", "running", "standing", "walking")
    assert set(d.train.labels) == set(d.test.labels) == {0, 1, 2, 3}
    steps = d.train.x.reshape(-1, 6)
    np.testing.assert_allclose(steps.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(steps.std(axis=0), 1.0, rtol=1e-12)
    # the test split is normalised with the training statistics, not its own
    raw_test, _ = aeon.datasets.load_classification("BasicMotions", split="test")
    np.testing.assert_allclose(d.test.x[3], (raw_test[3].T - d.mean) / d.std, rtol=1e-12)
    assert abs(d.test.x.reshape(-1, 6).mean(axis=0)).max() > 1e-3


def test_japanese_vowels_keeps_true_lengths_and_pads_with_zeros():
    d = load_dataset("JapaneseVowels")
    assert d.n_inputs == 12 and d.classes == tuple(str(i) for i in range(1, 10))
    for split in (d.train, d.test):
        assert split.lengths.min() == 7 and split.x.shape[1] == split.lengths.max()
        assert len(set(split.lengths.tolist())) > 10
        for x, n in zip(split.x, split.lengths):
            assert np.all(x[n:] == 0.0) and np.any(x[n - 1] != 0.0)
    # statistics over true steps only (padding would pull the mean towards zero)
    true_steps = np.concatenate([x[:n] for x, n in zip(d.train.x, d.train.lengths)])
    np.testing.assert_allclose(true_steps.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(true_steps.std(axis=0), 1.0, rtol=1e-12)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown data set 'NoSuchSet'.*BasicMotions.*JapaneseVowels"):
        load_dataset("NoSuchSet")


def test_too_long_sequences_are_an_error():
    with pytest.raises(ValueError, match="100 steps, longer than the maximum of 64"):
        load_dataset("BasicMotions", max_length=64)


def _fake_loader(monkeypatch, train, test):
    def load(name, split):
        return train if split == "train" else test

    monkeypatch.setattr(aeon.datasets, "load_classification", load)


def test_nan_values_are_an_error(monkeypatch):
    x = np.ones((2, 1, 5))
    x[1, 0, 3] = np.nan
    _fake_loader(monkeypatch, (x, np.array(["a", "b"])), (np.ones((1, 1, 5)), np.array(["a"])))
    with pytest.raises(ValueError, match="NaN values in sample 1"):
        load_dataset("BasicMotions")


def test_numeric_class_names_sort_numerically_and_clipping_is_counted(monkeypatch):
    rng = np.random.default_rng(0)
    train = [rng.normal(size=(2, n)) for n in (3, 5, 4)]
    train[1][0, 2] = 100.0  # an outlier far outside ±3 after normalisation
    _fake_loader(monkeypatch, (train, np.array(["10", "9", "2"])), ([rng.normal(size=(2, 6))], np.array(["9"])))
    d = load_dataset("BasicMotions", clip=2.0)
    assert d.classes == ("2", "9", "10")
    assert d.train.labels.tolist() == [2, 1, 0] and d.test.labels.tolist() == [1]
    assert d.clipped >= 1 and np.abs(d.train.x).max() == 2.0
    assert d.train.lengths.tolist() == [3, 5, 4] and d.test.x.shape == (1, 6, 2)


def test_energy_features_are_the_raw_channels_and_their_normalised_squares():
    raw, d = load_dataset("BasicMotions"), load_dataset("BasicMotions", features="energy")
    assert d.features == "energy" and d.n_inputs == 12 and d.test.x.shape == (40, 100, 12)
    for split, raw_split in ((d.train, raw.train), (d.test, raw.test)):
        assert np.array_equal(split.x[:, :, :6], raw_split.x)
        assert np.array_equal(split.lengths, raw_split.lengths) and np.array_equal(split.labels, raw_split.labels)
    # the squares are normalised with the training split's statistics, also on the test split
    steps = d.train.x.reshape(-1, 12)
    np.testing.assert_allclose(steps.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(steps.std(axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(d.test.x[3, :, 6:], (raw.test.x[3] ** 2 - d.mean[6:]) / d.std[6:], rtol=1e-12)
    assert abs(d.test.x.reshape(-1, 12)[:, 6:].mean(axis=0)).max() > 1e-3
    np.testing.assert_allclose(d.mean[:6], raw.mean, rtol=1e-12)


def test_energy_features_keep_padding_zero_and_statistics_over_true_steps():
    d = load_dataset("JapaneseVowels", features="energy")
    assert d.n_inputs == 24
    for split in (d.train, d.test):
        for x, n in zip(split.x, split.lengths):
            assert np.all(x[n:] == 0.0) and np.any(x[n - 1, 12:] != 0.0)
    true_steps = np.concatenate([x[:n] for x, n in zip(d.train.x, d.train.lengths)])
    np.testing.assert_allclose(true_steps.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(true_steps.std(axis=0), 1.0, rtol=1e-12)


def test_unknown_features_are_an_error():
    with pytest.raises(ValueError, match="unknown input features 'cubes'; choose one of raw, energy"):
        load_dataset("BasicMotions", features="cubes")


# --- the generated delayed-recall task -------------------------------------------------------

from echoboard.host.datasets import RECALL_MAX_LENGTH, _delayed_recall, _recall_pulse, _recall_samples  # noqa: E402

CLIP = (2 ** 15 - 1) / 2 ** 11  # what training passes for the default 16-bit Q.11 input word


@pytest.fixture(scope="module")
def recall_1k():
    return load_dataset("DelayedRecall-1000", clip=CLIP)


def test_delayed_recall_shapes_balanced_labels_and_training_statistics(recall_1k):
    d = recall_1k
    assert d.name == "DelayedRecall-1000" and d.classes == ("0", "1", "2", "3") and d.features == "raw"
    assert d.train.x.shape == (400, 1000, 4) and d.test.x.shape == (200, 1000, 4) and d.n_inputs == 4
    assert np.all(d.train.lengths == 1000) and np.all(d.test.lengths == 1000)
    assert np.bincount(d.train.labels).tolist() == [100] * 4 and np.bincount(d.test.labels).tolist() == [50] * 4
    steps = d.train.x.reshape(-1, 4)
    np.testing.assert_allclose(steps.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(steps.std(axis=0), 1.0, rtol=1e-12)
    assert d.clipped == 0 and np.abs(d.train.x).max() < CLIP  # the raw pulse stays inside the input word
    # the splits are the generator's arrays, normalised with the training statistics
    raw, labels, _ = _delayed_recall(1000, "test")
    np.testing.assert_allclose(d.test.x, (raw - d.mean) / d.std, rtol=1e-12, atol=1e-12)
    assert np.array_equal(d.test.labels, labels)


def test_delayed_recall_pulse_lies_in_the_first_five_percent(recall_1k):
    window, steps = _recall_pulse(1000)
    assert (window, steps) == (50, 16)
    for split, name in ((recall_1k.train, "train"), (recall_1k.test, "test")):
        raw, labels, starts = _delayed_recall(1000, name)
        assert starts.min() >= 0 and (starts + steps).max() <= window and len(set(starts.tolist())) > 20
        pulse = np.zeros_like(raw)
        pulse[np.arange(len(raw))[:, None], starts[:, None] + np.arange(steps), labels[:, None]] = 1.0
        noise = raw - pulse
        assert abs(noise.std() / 0.125 - 1) < 0.01 and abs(noise.mean()) < 1e-3
        # normalised: the pulse stands ~7 above noise of ~0.9; nowhere after the first 5 % is there one
        on = split.x[np.arange(len(raw))[:, None], starts[:, None] + np.arange(steps), labels[:, None]]
        assert on.mean() > 6.5 and np.abs(split.x[:, window:]).max() < 6.0


def test_delayed_recall_is_deterministic_and_pinned():
    a, b = load_dataset("DelayedRecall-1000"), load_dataset("DelayedRecall-1000")
    for s, t in ((a.train, b.train), (a.test, b.test)):
        assert np.array_equal(s.x, t.x) and np.array_equal(s.labels, t.labels)
    # the generator's seeds are fixed: the same draws on every machine (with the pinned numpy)
    x, labels, starts = _delayed_recall(1000, "train")
    assert labels[:8].tolist() == [2, 3, 3, 3, 1, 0, 1, 2] and starts[:8].tolist() == [14, 22, 28, 28, 20, 27, 33, 8]
    np.testing.assert_allclose(x[0, 0], [0.1068596, 0.02158553, 0.11416804, -0.01046395], rtol=1e-6)
    x, labels, starts = _delayed_recall(1000, "test")
    assert labels[:8].tolist() == [3, 3, 0, 2, 2, 1, 1, 2] and starts[:8].tolist() == [29, 19, 3, 18, 17, 14, 3, 19]
    other, _, _ = _delayed_recall(1200, "test")  # another length is another draw
    assert not np.allclose(other[:, :1000], x)


def test_delayed_recall_label_lives_only_in_the_first_five_percent(recall_1k):
    """The task needs memory: the per-channel energy of the first 5 % names the class, the second half does not."""
    x = np.concatenate([recall_1k.train.x, recall_1k.test.x])
    labels = np.concatenate([recall_1k.train.labels, recall_1k.test.labels])
    early = ((x[:, :50] ** 2).sum(axis=1).argmax(axis=1) == labels).mean()
    late = ((x[:, 500:] ** 2).sum(axis=1).argmax(axis=1) == labels).mean()
    assert early >= 0.95 and abs(late - 0.25) < 0.06, (early, late)


def test_delayed_recall_sample_counts_keep_the_long_splits_in_memory():
    assert _recall_samples(1000) == (400, 200) and _recall_samples(16000) == (400, 200)
    assert _recall_samples(50000) == (248, 124)
    for length in (1000, 16000, 50000, 123457, RECALL_MAX_LENGTH):
        train, test = _recall_samples(length)
        assert train * length * 4 * 8 <= 400e6 and train % 4 == 0 and test % 4 == 0 and test >= 4
    x, labels, starts = _delayed_recall(50000, "test")  # the 50k test split only (198 MB), not the loader
    assert x.shape == (124, 50000, 4) and np.bincount(labels).tolist() == [31] * 4
    assert (starts + _recall_pulse(50000)[1]).max() <= 2500


def test_delayed_recall_energy_features():
    raw, d = load_dataset("DelayedRecall-400"), load_dataset("DelayedRecall-400", features="energy", clip=CLIP)
    assert d.n_inputs == 8 and d.train.x.shape == (400, 400, 8)
    assert np.array_equal(d.train.x[:, :, :4], raw.train.x) and np.array_equal(d.test.labels, raw.test.labels)
    assert d.clipped > 0  # the squared pulse saturates at the clip (module docstring)


def test_delayed_recall_names_are_listed_and_malformed_ones_are_errors():
    listed = {"DelayedRecall-1000", "DelayedRecall-16000", "DelayedRecall-50000", "BasicMotions"}
    assert listed <= set(available_datasets())
    with pytest.raises(ValueError, match=r"unknown data set 'NoSuchSet'.*; or DelayedRecall-<L>"):
        load_dataset("NoSuchSet")
    for name in ("DelayedRecall-abc", "DelayedRecall-16k", "DelayedRecall-01000", "DelayedRecall", "DelayedRecall-"):
        with pytest.raises(ValueError, match=rf"malformed data set name '{name}'.*DelayedRecall-<L>"):
            load_dataset(name)
    for name, length in (("DelayedRecall-3", 3), ("DelayedRecall-399", 399), ("DelayedRecall-200001", 200001)):
        with pytest.raises(ValueError, match=rf"'{name}': length L = {length} is outside 400\.\.200000"):
            load_dataset(name)
    with pytest.raises(ValueError, match="'DelayedRecall-70000' has sequences of 70000 steps, longer than the maximum"):
        load_dataset("DelayedRecall-70000", max_length=65536)  # refused before anything is generated
