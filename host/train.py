"""Training the on-board model on a real data set: host-side Adam, checkpoints, summary, plots.

The loop is what the board protocol will do (issue 5): per minibatch, gradients of A and B come
from the target (today the in-process golden model), the head's from the host; Adam runs on the
host in float64, the result is projected onto the stable set and the format's range, and the
fixed-point target quantises it before the next batch. Everything is deterministic on the CPU,
so a checkpoint (params, Adam moments, the shuffling RNG's state, history) written after every
epoch lets ``--resume`` continue bit-identically.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from golden_model import model
from golden_model.formats import FixedFormat, HRUSize
from golden_model.fixed import int_range
from host.datasets import load_dataset

TARGETS = ("golden",)  # "sim" (the simulated board) arrives with the Board API
CHECKPOINT = "checkpoint.npz"
# settings a resumed run must share with the run that wrote the checkpoint
_RESUME_KEYS = ("dataset", "target", "algo", "batch", "lr", "seed", "oscillators")


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "BasicMotions"
    target: str = "golden"
    algo: str = "rhel"
    epochs: int = 60
    batch: int = 8
    lr: float = 0.02
    seed: int = 0
    oscillators: int = model.DEFAULT_OSCILLATORS
    out: str | None = None  # default runs/<dataset>-<algo>-<seed>
    resume: bool = False

    def out_dir(self) -> str:
        return self.out or os.path.join("runs", f"{self.dataset}-{self.algo}-{self.seed}")


def adam_step(params: dict, grads: dict, state: dict, lr: float,
              b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> tuple[dict, dict]:
    """One Adam update (Kingma & Ba, bias-corrected) of the parameters that have gradients."""
    t = state["t"] + 1
    m = {k: b1 * state["m"][k] + (1 - b1) * g for k, g in grads.items()}
    v = {k: b2 * state["v"][k] + (1 - b2) * g * g for k, g in grads.items()}
    new = dict(params)
    for k in grads:
        new[k] = params[k] - lr * (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
    return new, {"t": t, "m": m, "v": v}


def params_sha256(params: dict) -> str:
    """Digest of the float64 master parameters (sorted names, C order): equal runs, equal digests."""
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(params[k], dtype=np.float64).tobytes())
    return h.hexdigest()


def save_checkpoint(path: str, params: dict, adam: dict, rng: np.random.Generator, meta: dict) -> None:
    """One npz, written to a temporary file and renamed, so a kill never leaves a torn checkpoint."""
    arrays = {f"param/{k}": v for k, v in params.items()}
    arrays.update({f"{s}/{k}": v for s in ("m", "v") for k, v in adam[s].items()})
    meta = {**meta, "adam_t": adam["t"], "rng": rng.bit_generator.state}
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> tuple[dict, dict, np.random.Generator, dict]:
    """(params, Adam state, the shuffling RNG, meta) exactly as ``save_checkpoint`` wrote them."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        group = {s: {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(s + "/")} for s in ("param", "m", "v")}
    params, adam = group["param"], {"t": meta.pop("adam_t"), "m": group["m"], "v": group["v"]}
    rng = np.random.default_rng()
    rng.bit_generator.state = meta.pop("rng")
    return params, adam, rng, meta


def _validate(cfg: TrainConfig) -> None:
    if cfg.target not in TARGETS:
        raise ValueError(f"unknown target {cfg.target!r}; available: {', '.join(TARGETS)}")
    if cfg.algo not in model.ALGOS:
        raise ValueError(f"unknown algorithm {cfg.algo!r}; choose one of {', '.join(model.ALGOS)}")
    for name in ("epochs", "batch", "oscillators"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(cfg, name)}")
    if not cfg.lr > 0:
        raise ValueError(f"lr must be positive, got {cfg.lr}")


def _accuracy(params, split, algo, fmt) -> tuple[float, int]:
    logits, overflows = model.predict(params, split.x, split.lengths, algo, fmt)
    return float(np.mean(np.argmax(logits, axis=1) == split.labels)), overflows


def train(cfg: TrainConfig, fmt: FixedFormat = FixedFormat(), size: HRUSize = HRUSize(),
          progress: bool | None = None) -> dict:
    """Train (or resume) per ``cfg``; writes OUT/checkpoint.npz each epoch, OUT/summary.json and OUT/curves.png.

    ``progress``: show a tqdm bar (None: only on a terminal). Returns the summary dict.
    """
    from tqdm import tqdm

    _validate(cfg)
    out = cfg.out_dir()
    ckpt = os.path.join(out, CHECKPOINT)
    # normalised inputs are clipped to what the fixed-point input word holds, for every algorithm alike
    data = load_dataset(cfg.dataset, max_length=size.max_length, clip=int_range(fmt.input_width)[1] / 2.0 ** fmt.input_frac)
    settings = {k: getattr(cfg, k) for k in _RESUME_KEYS}
    if cfg.resume:
        if not os.path.isfile(ckpt):
            raise ValueError(f"--resume: no checkpoint at {ckpt}")
        params, adam, rng, meta = load_checkpoint(ckpt)
        changed = {k: (meta["settings"][k], v) for k, v in settings.items() if meta["settings"][k] != v}
        if changed:
            raise ValueError(f"--resume with different settings than the checkpoint (was, now): {changed}")
        epoch, history = meta["epoch"], meta["history"]
    else:
        if os.path.exists(ckpt):
            raise ValueError(f"{ckpt} exists: pass --resume to continue it, or choose another --out")
        rng = np.random.default_rng(cfg.seed)
        params, _ = model.project(model.init_params(rng, data.n_inputs, data.n_classes, cfg.oscillators), fmt)
        adam = {"t": 0, **{s: {k: np.zeros_like(params[k]) for k in model.TRAINED} for s in ("m", "v")}}
        epoch, history = 0, []
    os.makedirs(out, exist_ok=True)

    train_split, n = data.train, len(data.train)
    n_batches = -(-n // cfg.batch)
    with tqdm(total=cfg.epochs * n_batches, initial=epoch * n_batches, disable=None if progress is None else not progress,
              desc=f"{cfg.dataset} {cfg.algo}", unit="batch") as bar:
        while epoch < cfg.epochs:
            order = rng.permutation(n)
            loss_sum, overflows, clipped = 0.0, 0, 0
            for start in range(0, n, cfg.batch):
                idx = order[start:start + cfg.batch]
                r = model.batch_gradients(params, train_split.x[idx], train_split.lengths[idx],
                                          train_split.labels[idx], cfg.algo, fmt)
                params, adam = adam_step(params, r.grads, adam, cfg.lr)
                params, c = model.project(params, fmt)
                loss_sum += r.loss * len(idx)
                overflows += r.overflow_events
                clipped += c
                bar.update()
                bar.set_postfix(loss=f"{r.loss:.3f}")
            train_acc, o1 = _accuracy(params, data.train, cfg.algo, fmt)
            test_acc, o2 = _accuracy(params, data.test, cfg.algo, fmt)
            epoch += 1
            history.append({"epoch": epoch, "loss": loss_sum / n, "train_accuracy": train_acc,
                            "test_accuracy": test_acc, "overflow_events": overflows + o1 + o2, "clipped": clipped})
            save_checkpoint(ckpt, params, adam, rng, {"settings": settings, "epoch": epoch, "history": history})

    last = history[-1]
    summary = {
        "dataset": cfg.dataset, "target": cfg.target, "algo": cfg.algo, "epochs": epoch,
        "train_accuracy": last["train_accuracy"], "test_accuracy": last["test_accuracy"],
        "params_sha256": params_sha256(params),
        "overflow_events": sum(h["overflow_events"] for h in history),
        "clipped": sum(h["clipped"] for h in history), "inputs_clipped": data.clipped,
        "settings": settings, "history": history,
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot_history(history, os.path.join(out, "curves.png"), f"{cfg.dataset} · {cfg.algo} · seed {cfg.seed}")
    return summary


def plot_history(history: list[dict], path: str, title: str) -> None:
    """Loss and train/test accuracy per epoch, as a PNG (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["loss"] for h in history])
    ax1.set(xlabel="epoch", ylabel="training loss", yscale="log")
    for key in ("train_accuracy", "test_accuracy"):
        ax2.plot(epochs, [h[key] for h in history], label=key.split("_")[0])
    ax2.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    parser.add_argument("--dataset", default=d.dataset, help=f"aeon classification set (default {d.dataset})")
    parser.add_argument("--target", default=d.target, choices=TARGETS,
                        help="where the HRU runs: golden = the in-process bit-exact model (the default until "
                             "the simulated board, 'sim', is available)")
    parser.add_argument("--algo", default=d.algo, choices=model.ALGOS,
                        help="rhel = fixed-point RHEL on the target; rhel-float = float64 RHEL; "
                             f"bptt = float64 BPTT on the host (default {d.algo})")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"total epochs (default {d.epochs})")
    parser.add_argument("--batch", type=int, default=d.batch, help=f"minibatch size (default {d.batch})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"init and shuffling seed (default {d.seed})")
    parser.add_argument("--oscillators", type=int, default=d.oscillators,
                        help=f"P, the number of oscillators (default {d.oscillators})")
    parser.add_argument("--out", default=None, help="output folder (default runs/<dataset>-<algo>-<seed>)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz up to --epochs")
    parser.set_defaults(run=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    summary = train(TrainConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    print(json.dumps(summary, indent=1))
    return 0
