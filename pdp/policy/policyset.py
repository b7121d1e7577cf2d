"""The policies in force, indexed for selection per request.

Selection is by tenant and checkpoint (pre-indexed, so decision cost does not grow with the
number of tenants) and then by each policy's match filter. Built-ins apply to every tenant
unless that tenant relaxed them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from pdp.policy.compiled import CompiledPolicy
from pdp.policy.model import Checkpoint, LabelSelector, MatchFilter, Status

#: Selections a policy set remembers (cleared when full: label sets are few in practice).
_SELECTIONS = 4096


@dataclass
class PolicySet:
    policies: list[CompiledPolicy]
    builtins: list[CompiledPolicy]
    relaxed: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: Tenants known besides those with an active or retired policy here (created by an
    #: admin, or whose policies were active once): a decision for a tenant outside both is
    #: UNKNOWN_TENANT. Drafts alone do not make a tenant known.
    known_tenants: frozenset[str] = frozenset()
    _index: dict[tuple[str, Checkpoint], list[CompiledPolicy]] = field(
        default_factory=dict, init=False, repr=False)
    _tenants: set[str] = field(default_factory=set, init=False, repr=False)
    _known: frozenset[str] = field(default_factory=frozenset, init=False, repr=False)
    _selections: dict[tuple[object, ...], list[CompiledPolicy]] = field(
        default_factory=dict, init=False, repr=False)
    #: Per index entry: whether any of its policies filters on the change, on agent labels,
    #: on device labels. What no policy filters on is left out of the selection key, and
    #: where none filters at all, selection is the index entry itself.
    _filters: dict[tuple[str, Checkpoint], tuple[bool, bool, bool]] = field(
        default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.policies = _with_counter_history(self.policies)
        live = [p for p in self.policies
                if p.policy.enabled and p.policy.status is not Status.RETIRED]
        by_tenant: dict[str, list[CompiledPolicy]] = {}
        for p in live:  # one pass: start-up must not be tenants x policies
            by_tenant.setdefault(p.policy.tenant, []).append(p)
        self._tenants = set(by_tenant) | set(self.relaxed)
        # Drafts never change a live answer: a tenant whose only policies are drafts (or
        # approved, not yet active versions) stays unknown, as it was before the draft.
        self._known = (frozenset(p.policy.tenant for p in self.policies
                                 if p.policy.status in (Status.ACTIVE, Status.RETIRED))
                       | frozenset(self.relaxed) | self.known_tenants)
        for tenant in [*self._tenants, ""]:
            relaxed = self.relaxed.get(tenant, frozenset())
            mine = [b for b in self.builtins if b.name not in relaxed] + by_tenant.get(tenant, [])
            for cp in Checkpoint:
                found = self._index[(tenant, cp)] = [p for p in mine if p.policy.applies_to(cp)]
                matches = [p.policy.match for p in found]
                self._filters[(tenant, cp)] = (
                    any(m.subjects or m.sources or m.types for m in matches),
                    any(not m.agent_selector.empty for m in matches),
                    any(not m.device_selector.empty for m in matches))

    def tenants(self) -> set[str]:
        return set(self._tenants)

    def knows(self, tenant: str) -> bool:
        """Whether ``tenant`` exists for decisions: it has (or had) an active policy, relaxed
        built-ins, or an admin created it."""
        return tenant in self._known

    def for_tenant(self, tenant: str, checkpoint: Checkpoint) -> list[CompiledPolicy]:
        """Every enabled, non-retired policy of ``tenant`` at ``checkpoint`` (built-ins first)."""
        found = self._index.get((tenant, checkpoint))
        return found if found is not None else self._index[("", checkpoint)]

    def select(self, tenant: str, checkpoint: Checkpoint, change: Mapping[str, str],
               agent_labels: Mapping[str, str] | None,
               device_labels: Mapping[str, str] | None) -> list[CompiledPolicy]:
        """The policies that apply; remembered per (tenant, checkpoint, change, labels): a
        fleet asks with the same few label sets over and over. The list is shared: read it,
        do not change it.

        Labels that are not a mapping (only in-process callers can send them) cannot be
        matched: every policy with a selector on that side is selected, so it may deny
        rather than be skipped."""
        entry = (tenant, checkpoint) if (tenant, checkpoint) in self._index else ("", checkpoint)
        policies = self._index[entry]
        by_change, by_agent, by_device = self._filters[entry]
        if not (by_change or by_agent or by_device):
            return policies
        agent = _labels(agent_labels)
        device = _labels(device_labels)
        key: tuple[object, ...] | None = None
        hit = None
        try:
            key = (entry, _key(change) if by_change else None,
                   _key(agent) if by_agent else None, _key(device) if by_device else None)
            hit = self._selections.get(key)
        except TypeError:  # unhashable values: not remembered
            key = None
        if hit is not None:
            return hit
        found = [p for p in policies if _matches(p.policy.match, change, agent, device)]
        if key is not None:
            if len(self._selections) >= _SELECTIONS:
                self._selections.clear()
            self._selections[key] = found
        return found

    def all(self) -> Iterable[CompiledPolicy]:
        return [*self.builtins, *self.policies]


#: Counter rules whose stored pushes a longer version of the same policy can use.
_HISTORY_KINDS = ("cooldown", "velocity")


def _window(p: CompiledPolicy) -> int:
    spec = p.counter
    if spec is None or spec.kind not in _HISTORY_KINDS:
        return 0
    return spec.window_seconds or spec.min_interval_seconds


def _with_counter_history(policies: list[CompiledPolicy]) -> list[CompiledPolicy]:
    """Each cooldown / velocity policy told the longest window of any version of it here
    (same tenant, name and rule kind, whatever its status: a draft may be activated; a
    server's set holds the active and shadow versions). Its counter then keeps pushes that
    long, and the version with the longer window, once active, sees the pushes made
    before it. Before, pushes were kept only for the window of the version in force, so
    lengthening a window forgot the pushes in between (the store's ``history_seconds``
    covers the versions pdp has not seen yet)."""
    longest: dict[tuple[str, str, str], int] = {}
    for p in policies:
        if w := _window(p):
            k = (p.policy.tenant, p.name, p.counter.kind if p.counter else "")
            longest[k] = max(longest.get(k, 0), w)
    if not longest:
        return policies
    out = []
    for p in policies:
        w = _window(p)
        most = longest.get((p.policy.tenant, p.name, p.counter.kind if p.counter else ""), 0)
        out.append(replace(p, counter_history_s=most) if w and most > w else p)
    return out


class _Unreadable:
    """Labels that are not a mapping: no selector can say they do not match."""


_UNREADABLE = _Unreadable()


def _labels(labels: object) -> Mapping[str, str] | _Unreadable | None:
    if labels is None or isinstance(labels, Mapping):
        return labels
    return _UNREADABLE


def _key(values: Mapping[str, str] | _Unreadable | None) -> object:
    """A cache key for one label map (or the change) that two inputs share only if every
    selector treats them alike: None (no agent / no device) is not ``{}`` (an agent without
    labels: ``NotIn`` and ``DoesNotExist`` match it); keys and values keep their types
    (``1``, ``1.0``, ``True`` and ``"1"`` differ); order does not matter. Raises TypeError
    for unhashable values."""
    if values is None or isinstance(values, _Unreadable):
        return values
    return frozenset((type(k), k, type(v), v) for k, v in values.items())


def _matches(match: MatchFilter, change: Mapping[str, str],
             agent_labels: Mapping[str, str] | _Unreadable | None,
             device_labels: Mapping[str, str] | _Unreadable | None) -> bool:
    """``match.matches``, except that what cannot be compared (labels that are not a
    mapping, unhashable values) counts as matching: selecting a policy can only add denies,
    skipping it could allow what it forbids."""
    if isinstance(agent_labels, _Unreadable):
        match, agent_labels = replace(match, agent_selector=LabelSelector()), None
    if isinstance(device_labels, _Unreadable):
        match, device_labels = replace(match, device_selector=LabelSelector()), None
    try:
        return match.matches(change, agent_labels, device_labels)
    except TypeError:
        return True
