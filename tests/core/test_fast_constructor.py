"""meta.fast_constructor, the one exec-generated constructor: the objects it builds are the class's own."""

from __future__ import annotations

import dataclasses

import pytest
from netplane.ingress.routes import Forward, ProxyOptions

from netplane.model import ObjectKey
from netplane.model.endpoints import Endpoint
from netplane.model.meta import fast_constructor
from netplane.service_table import Backend

EP = Endpoint(("10.0.0.1",), True, True, False, "", "node-1", "z1", ("z1",))
CASES = [
    (
        Forward,
        (
            ObjectKey("Ingress", "ns", "web"),
            ("ns", "web"),
            (("10.0.0.1", 80),),
            "/x",
            False,
            ProxyOptions(),
            b"c=1",
            "a.example",
            True,
            None,
        ),
    ),
    (Endpoint, (("10.0.0.2",), False, True, True, "h", "node-2", "", ())),
    (Backend, (EP, 8080)),
]


@pytest.mark.parametrize(("cls", "args"), CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_the_object_is_the_one_the_dataclass_builds(cls: type, args: tuple) -> None:
    fast = fast_constructor(cls)(*args)
    slow = cls(*args)
    assert type(fast) is cls
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert dataclasses.astuple(fast) == dataclasses.astuple(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.__setattr__(dataclasses.fields(cls)[0].name, None)


def test_a_class_it_cannot_twin_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Base:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Derived(Base):
        b: int

    for cls in (NoSlots, Derived):
        with pytest.raises(TypeError, match="slotted dataclass"):
            fast_constructor(cls)
