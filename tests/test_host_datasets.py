"""host/datasets.py: aeon's shipped classification sets by name, normalisation, variable lengths, errors."""
import aeon.datasets
import numpy as np
import pytest

from host.datasets import available_datasets, load_dataset


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
