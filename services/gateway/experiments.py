"""A completion's part in an experiment (ExperimentService), for `services.gateway.completion`:
the unit's variant (assignment is sticky and deterministic on the service's side; the gateway
caches only which unit, user or session, an experiment assigns by), the exposure recorded in
the background once the variant is served, and feedback recorded as the experiment's outcome.
A gateway without an ExperimentService answers every one of them with UNIMPLEMENTED."""

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import grpc
from genai.experiment.v1 import experiment_pb2, experiment_service_pb2

from services.common.deadlines import time_until
from services.common.errors import FieldViolation, InvalidArgument, Unimplemented
from services.common.status import remote_error
from services.gateway.outcome import Caller, Outcome, Request, ServedRequest

_logger = logging.getLogger(__name__)

EXPERIMENT_CACHE_S: Final = 5.0
"""How long an experiment's assignment unit is cached."""
RECORD_TIMEOUT_S: Final = 5.0
"""The deadline of an exposure or outcome record."""
_SERVICE: Final = "genai.experiment.v1.ExperimentService"


class Experiments:
    """The gateway's client of ExperimentService (see the module docstring). One per gateway."""

    def __init__(self, stub: Any, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self._stub = stub
        """ExperimentService (None: this gateway reaches none)."""
        self._units: dict[tuple[str, str], tuple[float, int]] = {}
        """(tenant, experiment) -> (expiry, the experiment's assignment unit), briefly cached."""
        self._background: set[asyncio.Task[None]] = set()
        self._clock = clock

    def _require_experiments(self, caller: Caller) -> Any:
        """ExperimentService; raises `Unimplemented` when this gateway reaches none."""
        if self._stub is None:
            raise Unimplemented(
                "this gateway reaches no ExperimentService",
                method=caller.method,
                missing="an ExperimentService (gateway.targets.experiment)",
            )
        return self._stub

    async def assign(
        self, request: Request, caller: Caller, deadline: float | None
    ) -> tuple[experiment_pb2.Assignment, str]:
        """The unit's variant of `request.experiment`, and the unit's id: the user or the
        session, as the experiment says."""
        stub = self._require_experiments(caller)
        name = request.experiment
        unit = await self._unit(stub, name, caller, deadline)
        if unit == experiment_pb2.ASSIGNMENT_UNIT_SESSION:
            unit_id, field = request.session_id, "session_id"
        else:
            unit_id, field = request.user_id, "user_id"
        if not unit_id:
            raise InvalidArgument(
                violations=[FieldViolation(field, f"experiment {name!r} assigns by {field}")]
            )
        response = await _call(
            stub.AssignVariant(
                experiment_service_pb2.AssignVariantRequest(experiment=name, unit_id=unit_id),
                timeout=time_until(deadline, self._clock),
                metadata=caller.metadata,
            )
        )
        assigned: experiment_pb2.Assignment = response.assignment
        return assigned, unit_id

    async def unit_of(self, caller: Caller, experiment: str, user_id: str, session_id: str) -> str:
        """The unit id a request of `experiment` was assigned by (its user or its session)."""
        stub = self._require_experiments(caller)
        unit = await self._unit(stub, experiment, caller, None)
        return session_id if unit == experiment_pb2.ASSIGNMENT_UNIT_SESSION else user_id

    async def _unit(self, stub: Any, name: str, caller: Caller, deadline: float | None) -> int:
        key = (caller.tenant_id, name)
        cached = self._units.get(key)
        now = self._clock()
        if cached is not None and cached[0] > now:
            return cached[1]
        response = await _call(
            stub.GetExperiment(
                experiment_service_pb2.GetExperimentRequest(name=name),
                timeout=time_until(deadline, self._clock),
                metadata=caller.metadata,
            )
        )
        unit: int = response.experiment.unit
        self._units[key] = (now + EXPERIMENT_CACHE_S, unit)
        return unit

    def record_exposure(self, outcome: Outcome, caller: Caller) -> None:
        """Records, in the background, that the unit was served its variant (only called
        after `assign`, so there is an ExperimentService)."""
        stub = self._stub
        request = experiment_service_pb2.RecordExposureRequest(
            experiment=outcome.experiment,
            unit_id=outcome.unit_id,
            variant=outcome.variant,
            request_id=outcome.request_id,
        )

        async def record() -> None:
            try:
                await stub.RecordExposure(
                    request, timeout=RECORD_TIMEOUT_S, metadata=caller.metadata
                )
            except grpc.aio.AioRpcError as error:
                _logger.warning(
                    "recording the exposure of request %s failed: %s",
                    request.request_id,
                    error.code().name,
                )

        task = asyncio.create_task(record())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def record_outcome(
        self,
        caller: Caller,
        request_id: str,
        metric: str,
        value: float | bool,
        served: ServedRequest,
    ) -> None:
        """Records feedback on a request that took part in `served.experiment` as an outcome
        of the experiment for its unit."""
        stub = self._require_experiments(caller)
        request = experiment_service_pb2.RecordOutcomeRequest(
            experiment=served.experiment,
            unit_id=served.unit_id,
            metric=metric,
            request_id=request_id,
        )
        if isinstance(value, bool):
            request.boolean_value = value
        else:
            request.numeric_value = value
        await _call(stub.RecordOutcome(request, timeout=RECORD_TIMEOUT_S, metadata=caller.metadata))

    async def drain(self) -> None:
        """Waits for background exposure records (at shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


async def _call(awaitable: Any) -> Any:
    try:
        return await awaitable
    except grpc.aio.AioRpcError as error:
        raise remote_error(error, service=_SERVICE, what="the experiment service") from None
