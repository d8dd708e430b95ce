"""The short form of the fault run (bench/chaos.py runs the long one)."""

import pytest
from django.db import connection
from django.test import override_settings

from tests.chaos import ChaosPlan, run_chaos
from tests.system import ROOT, System

pytestmark = pytest.mark.django_db(transaction=True)


@override_settings(RECONCILE_GRACE_SECONDS=0)
def test_nothing_accepted_is_lost_under_kills_restarts_and_provider_errors(topology):
    system = System(database=connection.settings_dict["NAME"], prefix=topology.prefix,
                    log_dir=ROOT / "var" / "test-logs" / f"chaos-{topology.prefix}",
                    SENDER_LEASE_SECONDS=5, SENDER_RETRY_SCHEDULE="1s,2s,2s,5s,5s,10s,10s,10s",
                    SENDER_IN_DOUBT_GRACE_SECONDS=15)
    system.start_all()
    try:
        token, template_id = system.staff_with_template("load")
        report = run_chaos(system, ChaosPlan(duration=20, rate=8, seed=7), token=token, template_id=template_id)
    finally:
        system.stop_all()
    print(f"\n[chaos] {report.summary()}")
    assert report.accepted > 100
    assert report.kills == 6 and report.restarts == 2
    assert report.lost == 0 and report.never_reached_provider == 0
    assert report.unexplained_duplicates == 0
    assert report.read_model_missing == 0 and report.read_model_behind == 0
