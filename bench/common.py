"""Shared pieces of the benchmarks: results, side-by-side timing, machine description."""

import logging
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Result:
    """One benchmark figure: repeated measurements of the project and, where there is one, its baseline.

    ``higher_is_better`` sets how the ratio reads. For rates (images/s) the ratio is project over
    baseline, for durations it is baseline over project, so a ratio above 1 always means faster.
    ``passed`` is None for figures without a target.
    """

    key: str
    title: str
    unit: str
    project: list[float]
    baseline: list[float] | None = None
    baseline_name: str = ""
    higher_is_better: bool = True
    target: str = ""
    passed: bool | None = None
    details: dict = field(default_factory=dict)

    @property
    def project_median(self) -> float | None:
        return statistics.median(self.project) if self.project else None

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline) if self.baseline else None

    @property
    def ratio(self) -> float | None:
        """Speed of the project over the baseline's, from the medians."""
        baseline, project = self.baseline_median, self.project_median
        if baseline is None or project is None or baseline <= 0 or project <= 0:
            return None
        if self.higher_is_better:
            return project / baseline
        return baseline / project

    def check_ratio(self, minimum: float) -> "Result":
        """Set the target to a minimum ratio and record whether the medians meet it."""
        self.target = f">= {minimum:g}x"
        self.passed = self.ratio is not None and self.ratio >= minimum
        return self

    def as_dict(self) -> dict:
        values = asdict(self)
        values.update(project_median=self.project_median, baseline_median=self.baseline_median, ratio=self.ratio)
        return values


def run_side_by_side(candidates: dict[str, Callable[[], float]], repeats: int, warmup: int = 0) -> dict[str, list[float]]:
    """Call each candidate ``repeats`` times, interleaved, and return each one's measured values.

    Each call returns its own figure (a rate or a duration). The order of the candidates is
    reversed on every other round, so a load that changes during the run affects all of them alike.
    The first ``warmup`` rounds are run the same way and left out of the values.
    """
    names = list(candidates)
    values: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            value = candidates[name]()
            if round_index < warmup:
                log.info("  %s, warm-up round %d of %d: %.4g", name, round_index + 1, warmup, value)
                continue
            values[name].append(value)
            log.info("  %s, round %d of %d: %.4g", name, round_index - warmup + 1, repeats, value)
    return values


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or else from `platform`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> dict:
    """Describe the machine and the versions that the figures depend on."""
    import numpy
    import PIL
    import torch
    import torchvision

    description = {
        "cpu": cpu_model(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        from PIL import features

        description["libjpeg_turbo"] = features.version("libjpeg_turbo")
    except (ImportError, ValueError):
        pass
    return description
