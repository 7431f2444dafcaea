"""The rate–quality plot of a compress-features run (``__job/rate_quality.png``)."""

from typing import Dict


def plot_rate_quality(by_rate: Dict[str, Dict[str, float]], path: str, title: str) -> None:
    """Writes the plot: top-1 agreement and max |diff| against bits per element, per rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for prefix, marker, label in (("u", "o-", "uniform"), ("vq", "s--", "codebook")):
        keys = [k for k in by_rate if k.startswith(prefix)]
        if not keys:
            continue
        xs = [by_rate[k]["bits_per_element"] for k in keys]
        left.plot(xs, [by_rate[k]["top1_agreement"] for k in keys], marker, label=label)
        right.semilogy(xs, [max(by_rate[k]["max_abs_diff"], 1e-12) for k in keys], marker, label=label)
        for k, x in zip(keys, xs):
            left.annotate(k, (x, by_rate[k]["top1_agreement"]), fontsize=7)
    left.set(xlabel="bits per element", ylabel="top-1 agreement", ylim=(0, 1.05))
    right.set(xlabel="bits per element", ylabel="max |output difference|")
    left.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
