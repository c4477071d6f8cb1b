"""The per-round record of a run: what `run_fedavg` returns and lessons plot."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

Weights = list  # a model's weights: list of NumPy arrays, as model.get_weights() returns


@dataclass
class History:
    """One dict per round (round, clients, bytes both ways, the aggregator's measurements,
    accuracy when evaluated), the final weights, and `plot()` for any recorded metric."""
    rounds: list = field(default_factory=list)
    final_weights: Optional[Weights] = None

    def __getitem__(self, key: str) -> list:
        return [r.get(key) for r in self.rounds]

    def __len__(self) -> int:
        return len(self.rounds)

    @property
    def accuracy(self) -> list:
        return self["accuracy"]

    def plot(self, metric: str = "accuracy", ax=None, label: Optional[str] = None, **kwargs):
        """Plot `metric` against the round number on `ax` (a new figure if None)."""
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        if not self.rounds:
            raise ValueError("this History is empty: run_fedavg has not recorded any round")
        points = [(r["round"], r[metric]) for r in self.rounds if r.get(metric) is not None]
        if not points:
            raise ValueError(f"metric must be one recorded in every evaluated round, such as "
                             f"{sorted(k for k in self.rounds[0] if k != 'round')}, got {metric!r}")
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(*zip(*points), label=label, **kwargs)
        ax.set_xlabel("round")
        ax.set_ylabel(metric.replace("_", " "))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if label:
            ax.legend()
        return ax


def progress_bar(total: int, enabled: bool, description: str):
    """A tqdm bar over rounds (None when disabled: lessons' committed outputs have none)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, leave=False)


def advance(bar, record: dict) -> None:
    """Move the bar one round on, showing the round's accuracy and clients."""
    if bar is None:
        return
    if record.get("accuracy") is not None:
        bar.set_postfix(accuracy=f"{record['accuracy']:.3f}", clients=record["num_clients"])
    bar.update(1)
