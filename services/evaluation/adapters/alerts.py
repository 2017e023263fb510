"""Where the online evaluator's quality alerts go: the evaluation store, so that
EvaluationService's ListQualityAlerts shows them, whichever process detected them."""

from services.evaluation.adapters.sql_store import SqlEvaluationStore
from services.evaluation.core.model import NewQualityAlert
from services.evaluation.core.online import Alert, AlertState


class StoreAlertSink:
    """`services.evaluation.core.online.AlertSink` over `SqlEvaluationStore`: a raised alert
    becomes a firing row; a resolved one resolves the detector's firing row of that stream."""

    def __init__(self, store: SqlEvaluationStore) -> None:
        self._store = store

    async def save(self, alert: Alert) -> None:
        """Records a raise or a resolve."""
        if alert.state is AlertState.FIRING:
            await self._store.create_alert(
                alert.tenant_id,
                NewQualityAlert(
                    prompt=alert.prompt,
                    prompt_version=alert.prompt_version,
                    scorer=alert.scorer,
                    detector=alert.detector,
                    baseline_mean=alert.baseline_mean,
                    observed_mean=alert.observed_mean,
                    sample_count=alert.sample_count,
                ),
            )
            return
        firing = await self._store.firing_alert(
            alert.tenant_id, alert.prompt, alert.prompt_version, alert.scorer, alert.detector
        )
        if firing is not None:
            await self._store.update_alert(
                alert.tenant_id,
                firing.id,
                observed_mean=alert.observed_mean,
                sample_count=alert.sample_count,
            )
            await self._store.resolve_alert(alert.tenant_id, firing.id)
