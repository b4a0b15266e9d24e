"""The pass interface every transformation implements.

Modelled on onnx_ir's passes: a pass checks ``requires`` before it runs and
``ensures`` after, returns ``PassResult(model, modified, stats)``; a
``PassManager`` runs a list of passes, optionally to a fixed point, and is a
pass itself so pipelines nest (a recipe step ``cleanup`` is a PassManager).
"""

from __future__ import annotations

import abc
import inspect
import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

from onnxopt.errors import CheckFailed, RecipeError
from onnxopt.ir.model import Model
from onnxopt.ir.opset import ensure_opset


@dataclass
class PassResult:
    model: Model
    modified: bool
    stats: dict[str, float] = field(default_factory=dict)


class Pass(abc.ABC):
    """One transformation. Subclasses set ``name`` and implement ``run``.

    Options are ordinary keyword arguments of ``__init__`` (typed, documented);
    the registry builds passes from recipe options by matching those names.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: the default-domain opset the pass needs; older models are upgraded first
    min_opset: ClassVar[int | None] = None

    def requires(self, model: Model) -> Model:
        """Pre-conditions. May return an upgraded model (opset); raises if unmet."""
        if self.min_opset is not None:
            model = ensure_opset(model, self.min_opset, who=f"pass {self.name!r}")
        return model

    @abc.abstractmethod
    def run(self, model: Model) -> PassResult:
        """Transform ``model`` (in place is fine) and say whether anything changed."""

    def ensures(self, result: PassResult) -> None:
        """Post-conditions: graph outputs still exist and are produced."""
        g = result.model.graph
        produced = {t.name for n in g.nodes for t in n.outputs} | {t.name for t in g.inputs}
        produced |= set(result.model.initializers())
        for out in g.outputs:
            if out.name not in produced:
                raise CheckFailed(f"pass {self.name!r} left graph output {out.name!r} unproduced")

    def __call__(self, model: Model) -> PassResult:
        upgraded = self.requires(model)
        result = self.run(upgraded)
        if upgraded is not model:
            result.modified = True
        self.ensures(result)
        return result

    def options(self) -> dict:
        """The pass's option values (for reports and saved recipes)."""
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self" and hasattr(self, p)}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


@dataclass
class PassRecord:
    """What one pass invocation did, for the per-pass stats table."""

    name: str
    iteration: int
    modified: bool
    nodes_before: int
    nodes_after: int
    seconds: float
    stats: dict[str, float] = field(default_factory=dict)


class PassManager(Pass):
    """Runs passes in order; with ``fixed_point`` repeats until none modifies."""

    name = "pipeline"

    def __init__(self, passes: Sequence[Pass], fixed_point: bool = True, max_iterations: int = 10,
                 name: str | None = None, on_pass: Callable[[PassRecord], None] | None = None):
        self.passes = list(passes)
        self.fixed_point = fixed_point
        self.max_iterations = max_iterations
        if name:
            self.name = name
        self.on_pass = on_pass
        self.records: list[PassRecord] = []

    def requires(self, model: Model) -> Model:
        return model  # each inner pass checks its own

    def ensures(self, result: PassResult) -> None:
        return None  # each inner pass checked its own

    def run(self, model: Model) -> PassResult:
        any_modified = False
        totals: dict[str, float] = {}
        for iteration in range(1, (self.max_iterations if self.fixed_point else 1) + 1):
            changed = False
            for p in self.passes:
                before = len(model.graph.nodes)
                t0 = time.perf_counter()
                res = p(model)
                rec = PassRecord(p.name, iteration, res.modified, before, len(res.model.graph.nodes),
                                 time.perf_counter() - t0, dict(res.stats))
                if isinstance(p, PassManager):
                    self.records.extend(p.records)
                    p.records = []
                else:
                    self.records.append(rec)
                if self.on_pass:
                    self.on_pass(rec)
                model = res.model
                changed |= res.modified
                for k, v in res.stats.items():
                    totals[f"{p.name}.{k}"] = totals.get(f"{p.name}.{k}", 0) + v
            any_modified |= changed
            if not changed:
                break
        return PassResult(model, any_modified, totals)

    def options(self) -> dict:
        return {"passes": [p.name for p in self.passes], "fixed_point": self.fixed_point}


# -- registry --------------------------------------------------------------
_REGISTRY: dict[str, type[Pass] | Callable[..., Pass]] = {}


def register(cls):
    """Class decorator: make a pass available by its ``name`` in recipes and --passes."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def register_factory(name: str, factory: Callable[..., Pass]) -> None:
    """Register a named pipeline (e.g. ``cleanup``) built by ``factory(**options)``."""
    _REGISTRY[name] = factory


def available_passes() -> dict[str, type[Pass] | Callable[..., Pass]]:
    _load_builtin()
    return dict(sorted(_REGISTRY.items()))


def _load_builtin() -> None:
    import onnxopt.passes.catalog  # noqa: F401  (imports every built-in pass module)


def create_pass(name: str, options: dict | None = None) -> Pass:
    """Build a registered pass, checking every option name against its signature."""
    import difflib

    _load_builtin()
    options = dict(options or {})
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known passes: {', '.join(sorted(_REGISTRY))}"
        raise RecipeError(f"unknown pass {name!r}{hint}")
    target = _REGISTRY[name]
    sig = inspect.signature(target.__init__ if isinstance(target, type) else target)
    params = {p for p in sig.parameters if p != "self"}
    for key in options:
        if key not in params:
            close = difflib.get_close_matches(key, list(params), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else (
                f"; its options are {', '.join(sorted(params))}" if params else "; it takes no options")
            raise RecipeError(f"unknown option {key!r} for pass {name!r}{hint}")
    try:
        return target(**options)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"bad options for pass {name!r}: {exc}") from exc
