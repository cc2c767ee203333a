"""Classification data sets shipped inside aeon's wheel, loaded by name, offline, ready for the HRU.

Why this shape: the HRU consumes one sequence ``u`` of shape (L, N) at a time, and sequences of
one data set may differ in length (JapaneseVowels: 7..29 steps). Each split is therefore a
zero-padded array (S, L_max, N) plus the true length of every sample; the model pools and
echoes over the true steps only. Channels are normalised with the mean and standard deviation
of the *training* split (over true steps only), so the test split never leaks into training.

Input features (``features``), part of the model's architecture:

- ``raw``: the normalised channels.
- ``energy``: each normalised channel and its square, the squares normalised again with their own
  training statistics (2N inputs). A linear HRU whose positions are mean-pooled is linear in its
  input, so it cannot see a class difference in signal *energy* (BasicMotions' classes differ
  mostly there); the squared channels give the linear model that quadratic statistic.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

FEATURES = ("raw", "energy")


@dataclass(frozen=True)
class Split:
    """One split: ``x`` (S, L_max, N) float64, zero beyond each sample's ``lengths``; labels 0..C-1."""

    x: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    """A normalised train/test pair with the class names (``classes[label]``) and the statistics used.

    Input channel i is ``(f_i - mean[i]) / std[i]`` for its feature f_i: a raw channel, or (the
    second half, ``energy``) the square of a normalised raw channel.
    """

    name: str
    train: Split
    test: Split
    classes: tuple[str, ...]
    mean: np.ndarray  # (N,) training-split feature means
    std: np.ndarray  # (N,) training-split feature standard deviations (1 where a feature is constant)
    clipped: int  # normalised values clipped to ±clip (both splits)
    features: str = "raw"

    @property
    def n_inputs(self) -> int:
        return self.train.x.shape[2]

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def _aeon_data_dir() -> str:
    import aeon.datasets

    return os.path.join(os.path.dirname(aeon.datasets.__file__), "data")


def _has_class_labels(ts_path: str) -> bool:
    """True when the .ts header declares class labels (regression and forecasting sets do not)."""
    with open(ts_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip().lower()
            if line.startswith("@classlabel"):
                return line.split()[1:2] == ["true"]
            if line.startswith("@data"):
                return False
    return False


def available_datasets() -> list[str]:
    """Names of the classification sets in aeon's wheel: those with a labelled ``NAME_TRAIN.ts``."""
    root = _aeon_data_dir()
    names = []
    for name in sorted(os.listdir(root)):
        train = os.path.join(root, name, f"{name}_TRAIN.ts")
        if os.path.isfile(os.path.join(root, name, f"{name}_TEST.ts")) and os.path.isfile(train):
            if _has_class_labels(train):
                names.append(name)
    return names


def _load_split(name: str, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """aeon's arrays as a list of (L, N) float64 sequences and the raw string labels."""
    from aeon.datasets import load_classification

    x, y = load_classification(name, split=split)
    seqs = [np.asarray(s, dtype=np.float64).T for s in x]  # aeon gives (channels, length)
    for i, s in enumerate(seqs):
        if np.isnan(s).any():
            raise ValueError(f"data set {name!r} ({split} split) has NaN values in sample {i}; "
                             "the HRU needs complete sequences")
    return seqs, np.asarray(y).astype(str)


def _class_order(labels: np.ndarray) -> tuple[str, ...]:
    """Sorted class names; numerically when every name is a number (so '10' comes after '9')."""
    names = sorted(set(labels.tolist()))
    try:
        return tuple(sorted(names, key=float))
    except ValueError:
        return tuple(names)


def _standardise(train: list[np.ndarray], test: list[np.ndarray]):
    """Both splits normalised with the training split's per-channel mean and std (over true steps)."""
    steps = np.concatenate(train)
    mean, std = steps.mean(axis=0), steps.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return [(s - mean) / std for s in train], [(s - mean) / std for s in test], mean, std


def _features(train: list[np.ndarray], test: list[np.ndarray], features: str):
    """The normalised input features of both splits (see the module docstring), and their statistics."""
    train, test, mean, std = _standardise(train, test)
    if features == "energy":
        train_sq, test_sq, mean_sq, std_sq = _standardise([z * z for z in train], [z * z for z in test])
        train = [np.concatenate(pair, axis=1) for pair in zip(train, train_sq)]
        test = [np.concatenate(pair, axis=1) for pair in zip(test, test_sq)]
        mean, std = np.concatenate([mean, mean_sq]), np.concatenate([std, std_sq])
    return train, test, mean, std


def _pad(seqs: list[np.ndarray], clip) -> tuple[np.ndarray, np.ndarray, int]:
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    x = np.zeros((len(seqs), int(lengths.max()), seqs[0].shape[1]))
    clipped = 0
    for i, z in enumerate(seqs):
        if clip is not None:
            clipped += int(np.count_nonzero(np.abs(z) > clip))
            z = np.clip(z, -clip, clip)
        x[i, : len(z)] = z
    return x, lengths, clipped


def load_dataset(name: str, max_length: int | None = None, clip: float | None = None,
                 features: str = "raw") -> Dataset:
    """Load aeon's classification set ``name`` (train and test), normalised with training statistics.

    ``max_length``: the longest sequence the target accepts; longer ones are an error rather than
    silently truncated. ``clip``: bound on normalised values (e.g. the fixed-point input range), so
    every algorithm sees the same inputs; how many values it touched is kept in ``clipped``.
    ``features``: one of FEATURES (module docstring).
    """
    if features not in FEATURES:
        raise ValueError(f"unknown input features {features!r}; choose one of {', '.join(FEATURES)}")
    names = available_datasets()
    if name not in names:
        raise ValueError(f"unknown data set {name!r}; aeon ships these classification sets: {', '.join(names)}")
    train_seqs, train_y = _load_split(name, "train")
    test_seqs, test_y = _load_split(name, "test")
    n_inputs = {s.shape[1] for s in train_seqs + test_seqs}
    if len(n_inputs) != 1:
        raise ValueError(f"data set {name!r} has samples with different channel counts {sorted(n_inputs)}")
    longest = max(len(s) for s in train_seqs + test_seqs)
    if max_length is not None and longest > max_length:
        raise ValueError(f"data set {name!r} has sequences of {longest} steps, longer than the maximum of {max_length}")
    classes = _class_order(train_y)
    unseen = sorted(set(test_y.tolist()) - set(classes))
    if unseen:
        raise ValueError(f"data set {name!r}: test labels {unseen} do not occur in the training split")
    train_x, test_x, mean, std = _features(train_seqs, test_seqs, features)
    index = {c: i for i, c in enumerate(classes)}
    splits, clipped = [], 0
    for seqs, y in ((train_x, train_y), (test_x, test_y)):
        x, lengths, n = _pad(seqs, clip)
        splits.append(Split(x, lengths, np.array([index[c] for c in y], dtype=np.int64)))
        clipped += n
    return Dataset(name, splits[0], splits[1], classes, mean, std, clipped, features)
