"""Which Ingresses this controller serves: IngressClass selection (sans-IO).

The rules, as ingress-nginx applies them:

- ``spec.ingressClassName: X`` is ours when the IngressClass named X exists
  and its ``spec.controller`` is ours;
- the legacy ``kubernetes.io/ingress.class: X`` annotation (used only when
  ``spec.ingressClassName`` is empty) is ours when X is our class name, or
  names an IngressClass of our controller;
- an Ingress with neither is ours when one of our controller's IngressClasses
  carries ``ingressclass.kubernetes.io/is-default-class: "true"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from netplane.model import Ingress, IngressClass
from netplane.model.ingress import LEGACY_CLASS_ANNOTATION
from netplane.state import ClusterState


@dataclass(frozen=True, slots=True)
class ClassSelector:
    """Our class names and whether unclassed Ingresses are ours, from the IngressClasses."""

    ingress_class: str
    controller: str
    ours: frozenset[str]  # IngressClass names whose controller is ours
    default: bool  # one of ours is the default class

    @classmethod
    def build(
        cls, classes: Iterable[IngressClass], *, ingress_class: str, controller: str
    ) -> ClassSelector:
        mine = [c for c in classes if c.controller == controller]
        return cls(
            ingress_class=ingress_class,
            controller=controller,
            ours=frozenset(c.key.name for c in mine),
            default=any(c.is_default for c in mine),
        )

    @classmethod
    def from_state(
        cls, state: ClusterState, *, ingress_class: str, controller: str
    ) -> ClassSelector:
        return cls.build(
            state.objects("IngressClass"),
            ingress_class=ingress_class,
            controller=controller,
        )

    def selects(self, ing: Ingress) -> bool:
        """Whether ``ing`` belongs to this controller."""
        name = ing.class_name
        if not name:
            return self.default
        if name in self.ours:
            return True
        # The model folds the legacy annotation into class_name when
        # spec.ingressClassName is empty; only that form may name the class
        # without an IngressClass object.
        legacy = ing.meta.annotations.get(LEGACY_CLASS_ANNOTATION, "")
        return legacy == name and name == self.ingress_class


def selected_ingresses(state: ClusterState, selector: ClassSelector) -> list[Ingress]:
    """Every Ingress of ours, in key order."""
    out = [i for i in state.objects("Ingress") if selector.selects(i)]
    out.sort(key=lambda i: i.key)
    return out
