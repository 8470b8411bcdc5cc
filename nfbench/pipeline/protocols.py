"""The originals' evaluation protocols, measured beside the suite's honest numbers.

The suite reports the last epoch, scored without test labels; most original codes chose what
they printed on the test set (docs/original-code.md §1a-§1d, §4 "Test-set model selection").
Each method declares its original's protocol as its detector's ``original_protocol`` (a
:class:`nfbench.methods.protocol.OriginalProtocol` subclass in the method's own package);
this module is the one generic recorder that drives it.

One run measures both: a method's ``fit(train, evaluate=recorder)`` calls ``evaluate(label)``
at the original's evaluation points; :class:`ProtocolRecorder` asks the protocol for the
point's entry under a forked RNG (the honest numbers of a run are the same with or without
it), times it, and after the honest evaluation :meth:`ProtocolRecorder.finish` returns
``record["original_protocol"]``. Nothing here trains, and nothing here knows a method.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch

from nfbench.methods import list_methods, method_class
from nfbench.methods.protocol import OriginalProtocol, finite


@contextlib.contextmanager
def _isolated() -> Iterator[None]:
    """No gradient, and the torch (CPU) and NumPy global RNG states restored afterwards: an
    evaluation consumes no random number of the run."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        numpy_state = np.random.get_state()
        try:
            yield
        finally:
            np.random.set_state(numpy_state)


class ProtocolRecorder:
    """The evaluations of one run at its original's evaluation points, and what the original
    would report. ``seconds`` is the time spent here (scoring and metrics), which the run's
    ``fit_seconds`` excludes."""

    def __init__(self, protocol: OriginalProtocol):
        self.protocol = protocol
        self.points: list[dict[str, Any]] = []
        self.seconds = 0.0

    def fit_kwargs(self) -> dict[str, Callable[[str], None]]:
        """What ``fit`` receives: the callback, for protocols that evaluate during training."""
        return {"evaluate": self} if self.protocol.evaluates_during_fit else {}

    def __call__(self, label: str) -> None:
        """Evaluate now (an evaluation point of the original)."""
        start = time.perf_counter()
        with _isolated():
            point = self.protocol.point(label)
        self.points.append(point)
        self.seconds += time.perf_counter() - start

    def finish(self, honest: dict[str, float]) -> dict[str, Any]:
        """``record["original_protocol"]``: the evaluation points, the test-selected point
        (best image AUROC over them, "as the original evaluated"), ``reported`` (what the
        original would have printed, per metric) and ``honest`` (the record's metrics)."""
        start = time.perf_counter()
        protocol = self.protocol
        result: dict[str, Any] = {"protocol": protocol.name, "description": protocol.description,
                                  "honest": dict(honest)}
        points = [dict(p, metrics=dict(honest)) if p["metrics"] is None else p for p in self.points]
        with _isolated():
            points, fields = protocol.final_points(points, honest)
        result.update(fields)
        if not points:  # no evaluation happened (e.g. fit called no hook)
            points = [{"label": "last epoch", "metrics": dict(honest)}]
        tested = [i for i, p in enumerate(points) if p["metrics"] is not None]
        best = max(tested, key=lambda i: finite(points[i]["metrics"]["image_auroc"]))
        result["points"] = points
        result["selected"] = {"label": points[best]["label"], "index": best,
                              "selection": "best image AUROC over the tested evaluation points",
                              "metrics": points[best]["metrics"]}
        result["reported"], result["reported_as"] = protocol.reported(points, best)
        others = protocol.by_protocol(points, result["reported"])
        if others is not None:
            result["by_protocol"] = others
        if any("normalization" in p for p in points):
            chosen = points[-1] if protocol.normalization_at_last else points[best]
            result["normalization"] = {"at": chosen["label"], **chosen["normalization"]}
        self.seconds += time.perf_counter() - start
        result["seconds"] = self.seconds
        return result


def for_run(detector: Any, train: Any, tests: dict[str, Any],
            seed: int) -> ProtocolRecorder | None:
    """The protocol recorder of a run (``tests``: category -> test set, several for a joint
    run), or ``None`` for a method that declares no original protocol."""
    protocol = detector.original_protocol
    if protocol is None:
        return None
    return ProtocolRecorder(protocol(detector, train, tests, seed))


def declared() -> dict[str, type[OriginalProtocol]]:
    """Every registered method's declared protocol, by protocol name."""
    out = {}
    for name in list_methods():
        protocol = method_class(name).original_protocol
        if protocol is not None:
            out[protocol.name] = protocol
    return out


def descriptions() -> dict[str, str]:
    """One line per protocol, for reports."""
    return {name: p.description for name, p in declared().items()}


def reported_as() -> dict[str, str]:
    """What each protocol reports, in a few words (companion tables)."""
    return {name: p.reported_as for name, p in declared().items()}
