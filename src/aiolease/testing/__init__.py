"""Test doubles, virtual time and leak checks for code that uses aiolease.

See ``docs/testing.md`` ("Testing code that uses aiolease"). The pytest
plugin (fixture ``aiolease_leaks``, markers ``aiolease_virtual_time`` and
``aiolease_leak_check``) is registered automatically through the ``pytest11``
entry point.
"""

from __future__ import annotations

from ._fake_connection import FakeConnection as FakeConnection
from ._fake_connection import FakeConnectionLost as FakeConnectionLost
from ._fake_connection import FakeCursor as FakeCursor
from ._fake_connection import FakeDatabase as FakeDatabase
from ._fake_connection import FakeDatabaseError as FakeDatabaseError
from ._fake_connection import FakeGate as FakeGate
from ._fakes import Call as Call
from ._fakes import FakeManager as FakeManager
from ._fakes import FakeResource as FakeResource
from ._fakes import Gate as Gate
from ._fakes import InjectedFault as InjectedFault
from ._fakes import LifecycleEvent as LifecycleEvent
from ._fakes import Op as Op
from ._fakes import ResourceKilled as ResourceKilled
from ._fakes import ResourceMisuse as ResourceMisuse
from ._fakes import Rule as Rule
from ._fault_proxy import FaultProxy as FaultProxy
from ._leaks import LeakCheck as LeakCheck
from ._leaks import leak_check as leak_check
from ._virtual_time import NoProgressError as NoProgressError
from ._virtual_time import VirtualTimeLoop as VirtualTimeLoop

__all__ = [
    "Call",
    "FakeConnection",
    "FakeConnectionLost",
    "FakeCursor",
    "FakeDatabase",
    "FakeDatabaseError",
    "FakeGate",
    "FakeManager",
    "FakeResource",
    "FaultProxy",
    "Gate",
    "InjectedFault",
    "LeakCheck",
    "LifecycleEvent",
    "NoProgressError",
    "Op",
    "ResourceKilled",
    "ResourceMisuse",
    "Rule",
    "VirtualTimeLoop",
    "leak_check",
]
