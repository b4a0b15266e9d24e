"""The pruning plan: channel groups, what is kept of each, and its JSON form.

A *group* (Torch-Pruning's word) is a set of channels that can only be
removed together. It is split into ``size`` *units*: the smallest removable
piece. A unit is usually one channel of each member tensor, but can be more:
a whole group of a grouped Conv, or a block of H*W features behind a Flatten.
``members`` lists every tensor the group touches, with the channel axis and,
per unit, the channel indices in that tensor.

After selection ``kept`` holds the kept unit indices of every group, and
:meth:`PruningPlan.kept_channels` turns them into kept channel indices PER
TENSOR: the distillation step maps a student channel to its teacher channel
with these lists. A saved plan is applied without data: everything the
apply step needs is in the JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from onnxopt.analysis.jsonfile import check_format, read_json
from onnxopt.errors import OnnxoptError

PLAN_FORMAT = "onnxopt-pruning-plan"
PLAN_VERSION = 1


@dataclass
class Member:
    """One tensor of a group: its channel axis, channel count and channels per unit."""

    tensor: str
    axis: int
    size: int  # channels of the tensor along ``axis`` (all groups together)
    channels: list[list[int]]  # channels[u] = this tensor's channel indices of unit u

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "axis": self.axis, "size": self.size, "channels": self.channels}

    @classmethod
    def from_dict(cls, d: dict) -> Member:
        return cls(str(d["tensor"]), int(d["axis"]), int(d["size"]), [[int(c) for c in u] for u in d["channels"]])


@dataclass
class Group:
    """Channels removed together. ``frozen`` groups are never pruned (``reasons`` say why)."""

    id: int
    size: int  # number of units
    members: list[Member]
    frozen: bool = False
    reasons: list[str] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)  # nodes whose output channels (weights) shrink
    consumers: list[str] = field(default_factory=list)  # nodes whose input channels (weights) shrink
    kept: list[int] | None = None  # kept unit indices after selection; None = all

    @property
    def prunable(self) -> bool:
        return not self.frozen and self.size >= 2

    @property
    def channels_per_unit(self) -> int:
        """Channels of one unit in the group's first tensor (for rounding and reports)."""
        return len(self.members[0].channels[0]) if self.members and self.members[0].channels else 1

    def kept_units(self) -> list[int]:
        return list(range(self.size)) if self.kept is None else list(self.kept)

    def removed_units(self) -> list[int]:
        keep = set(self.kept_units())
        return [u for u in range(self.size) if u not in keep]

    def to_dict(self) -> dict:
        return {"id": self.id, "size": self.size, "frozen": self.frozen, "reasons": self.reasons,
                "producers": self.producers, "consumers": self.consumers,
                "kept": self.kept, "members": [m.to_dict() for m in self.members]}

    @classmethod
    def from_dict(cls, d: dict) -> Group:
        kept = d.get("kept")
        return cls(int(d["id"]), int(d["size"]), [Member.from_dict(m) for m in d["members"]],
                   bool(d.get("frozen", False)), [str(r) for r in d.get("reasons", [])],
                   [str(p) for p in d.get("producers", [])], [str(c) for c in d.get("consumers", [])],
                   None if kept is None else [int(u) for u in kept])


@dataclass
class PruningPlan:
    """All groups of a model plus, after selection, the kept units of each."""

    groups: list[Group]
    settings: dict = field(default_factory=dict)  # how the plan was made (for reports; not used to apply)
    notes: list[str] = field(default_factory=list)

    # -- queries --------------------------------------------------------------
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def group(self, gid: int) -> Group:
        for g in self.groups:
            if g.id == gid:
                return g
        raise KeyError(gid)

    def tensor_axes(self) -> dict[str, tuple[int, int]]:
        """tensor -> (channel axis, channel count) for every tensor the plan knows."""
        return {m.tensor: (m.axis, m.size) for g in self.groups for m in g.members}

    def kept_channels(self, only_changed: bool = False) -> dict[str, list[int]]:
        """tensor -> sorted kept channel indices (every tensor, or only those that lose channels)."""
        kept: dict[str, list[int]] = {}
        sizes: dict[str, int] = {}
        for g in self.groups:
            units = g.kept_units()
            for m in g.members:
                sizes[m.tensor] = m.size
                lst = kept.setdefault(m.tensor, [])
                for u in units:
                    lst.extend(m.channels[u])
        out = {t: sorted(v) for t, v in kept.items()}
        if only_changed:
            out = {t: v for t, v in out.items() if len(v) != sizes[t]}
        return out

    def removed_units(self) -> int:
        return sum(len(g.removed_units()) for g in self.groups)

    def is_identity(self) -> bool:
        return self.removed_units() == 0

    def clear_selection(self) -> None:
        for g in self.groups:
            g.kept = None

    # -- JSON -------------------------------------------------------------------
    def to_dict(self) -> dict:
        axes = self.tensor_axes()
        kept = self.kept_channels()
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "settings": self.settings,
            "notes": self.notes,
            "groups": [g.to_dict() for g in self.groups],
            "tensors": {t: {"axis": axes[t][0], "size": axes[t][1], "kept": kept[t]} for t in sorted(kept)},
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "plan") -> PruningPlan:
        check_format(d, PLAN_FORMAT, PLAN_VERSION, where, "pruning plan")
        try:
            plan = cls([Group.from_dict(g) for g in d["groups"]], dict(d.get("settings", {})),
                       [str(n) for n in d.get("notes", [])])
        except (KeyError, TypeError, ValueError) as exc:
            raise OnnxoptError(f"malformed pruning plan: {type(exc).__name__}: {exc}") from exc
        plan.check_consistent()
        return plan

    def check_consistent(self) -> None:
        """Refuse plans whose kept lists cannot be right (bad indices, emptied or pruned frozen groups)."""
        for g in self.groups:
            if any(len(m.channels) != g.size for m in g.members):
                raise OnnxoptError(f"pruning plan group {g.id}: a member lists {len(g.members[0].channels)} units, "
                                   f"the group has {g.size}")
            if g.kept is None:
                continue
            if len(set(g.kept)) != len(g.kept) or any(u < 0 or u >= g.size for u in g.kept):
                raise OnnxoptError(f"pruning plan group {g.id}: kept units must be distinct indices in [0, {g.size})")
            if not g.kept:
                raise OnnxoptError(f"pruning plan group {g.id}: keeps no unit (a group must keep at least one)")
            if g.frozen and len(g.kept) != g.size:
                raise OnnxoptError(f"pruning plan group {g.id} is frozen ({'; '.join(g.reasons)}) but removes units")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path) -> Path:
        """Write the plan as JSON, atomically."""
        path = Path(path)
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise OnnxoptError(f"folder {parent} for the pruning plan does not exist")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(self.to_json())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path) -> PruningPlan:
        return cls.from_dict(read_json(path, "pruning plan"), str(path))
