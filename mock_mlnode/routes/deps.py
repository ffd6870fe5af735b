"""What the mock MLNode's routes share: the addressed instance, the mock, its settings, the 409 check.

The app keeps the mock and its settings in `app.state` (set by `create_app`), so the routers are
plain module-level objects and each route names what it needs in its signature. The dependencies
are `async` although they do no I/O: FastAPI runs a plain `def` dependency in a worker thread,
and a fleet mock answering a thousand nodes' calls spent more on those thread hops than on the
answers.
"""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam

from mock_mlnode.dispatch import TARGET_KEY
from mock_mlnode.instances import Instance, MockNode
from mock_mlnode.routing import Target
from mock_mlnode.settings import MockMLNodeSettings

__all__ = ["OK", "InstanceDep", "MockDep", "SettingsDep", "conflicts_with"]

OK: Final[dict[str, str]] = {"status": "OK"}


async def _mock(request: Request) -> MockNode:
    mock: MockNode = request.app.state.mock
    return mock


async def _settings(request: Request) -> MockMLNodeSettings:
    settings: MockMLNodeSettings = request.app.state.settings
    return settings


async def _instance(request: Request) -> Instance:
    mock: MockNode = request.app.state.mock
    target: Target | None = request.scope.get(TARGET_KEY)
    if target is None:  # only when the app is served without PrefixDispatch
        target = Target(mock.settings.default_version, mock.settings.default_node, request.url.path)
    return mock.get(target)


MockDep = Annotated[MockNode, Depends(_mock)]
SettingsDep = Annotated[MockMLNodeSettings, Depends(_settings)]
InstanceDep = Annotated[Instance, Depends(_instance)]


def conflicts_with(service: str) -> list[DependsParam]:
    """The real routers' dependency: 409 when another service than `service` runs."""

    async def check(inst: InstanceDep) -> None:
        inst.machine.check_conflict(service)

    return [Depends(check)]
