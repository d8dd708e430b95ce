"""The PrometheusRule as the production overlay renders it: a valid Prometheus Operator object
(cloudcoil models generated from the operator's CRDs), rules promtool accepts, alerts complete
(for, severity, summary, description, a runbook paragraph that exists), and no alert watching a
metric the code does not register."""

import copy
import importlib
import re
import shutil
import subprocess

import pydantic
import pytest
import yaml
from cloudcoil.resources import get_model
from prometheus_client import REGISTRY

from tests.deploy.test_manifests import ROOT, render

# Every module that registers metrics a deployed process exports.
METRIC_MODULES = [
    "core.http_metrics",
    "core.outbox.deadletters",
    "command_api.webhooks.services",
    "outbox_relay.relay",
    "sender.consumer",
    "sender.handlers",
    "query_api.apply",
    "query_api.projector",
]
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def prometheus_rule() -> dict:
    rules = [o for o in render("overlays/production") if o["kind"] == "PrometheusRule"]
    assert len(rules) == 1, "the production overlay holds one PrometheusRule (components/monitoring)"
    return rules[0]


def alerts() -> list[dict]:
    return [rule for group in prometheus_rule()["spec"]["groups"] for rule in group["rules"]]


def validate(obj: dict) -> None:
    """As strict as `kubectl apply`: no unknown field, no coercion, the CRD's own names only."""
    model = get_model(obj["kind"], api_version=obj["apiVersion"])
    model.model_validate(obj, extra="forbid", strict=True, by_alias=True, by_name=False)


def test_the_rule_is_a_valid_prometheus_operator_object():
    obj = prometheus_rule()
    validate(obj)
    assert obj["metadata"]["namespace"] == "emails"


@pytest.mark.parametrize(
    "change",
    [
        lambda rule: rule.update({"fro": "5m"}),
        lambda rule: rule.update({"for": "5 minutes"}),
        lambda rule: rule.update({"labels": {"severity": 1}}),
    ],
    ids=["misspelt-field", "bad-duration", "number-for-label"],
)
def test_the_validation_really_rejects_a_bad_rule(change):
    obj = copy.deepcopy(prometheus_rule())
    change(obj["spec"]["groups"][0]["rules"][0])
    with pytest.raises(pydantic.ValidationError):
        validate(obj)


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is needed to check the alert rules: install it (Debian: apt-get install prometheus)"
    return found


def test_promtool_accepts_the_rules(tmp_path):
    groups = tmp_path / "rules.yaml"
    groups.write_text(yaml.safe_dump({"groups": prometheus_rule()["spec"]["groups"]}))
    checked = subprocess.run([promtool(), "check", "rules", str(groups)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


def test_promtool_refuses_a_broken_expression(tmp_path):
    groups = prometheus_rule()["spec"]["groups"]
    groups[0]["rules"][0]["expr"] = "max(outbox_oldest_unpublished_age_seconds > 300"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    assert subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True).returncode != 0


def runbook_paragraphs() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Ops runbook\n", 1)[1].split("\n## ", 1)[0]
    return {title.rstrip(".") for title in re.findall(r"^\*\*(.+?)\*\*", section, re.M)}


def test_every_alert_is_complete_and_names_a_runbook_paragraph_that_exists():
    paragraphs = runbook_paragraphs()
    assert alerts()
    for rule in alerts():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        page, _, paragraph = rule["annotations"]["runbook"].partition(": ")
        assert page == "README.md#ops-runbook", name
        assert paragraph.rstrip(".") in paragraphs, f"{name}: no paragraph **{paragraph}** in the ops runbook"


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects: label matchers, range and grouping clauses,
    strings, function names and keywords taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()", expr))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d.*|[eE]\d*|Inf|NaN", n)}


def exported_names() -> set[str]:
    """Every series name the code's metrics export, from prometheus_client's registry."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"]}
    suffixes["summary"] = ["_count", "_sum", ""]
    return {family.name + s for family in REGISTRY.collect() for s in suffixes.get(family.type, [""])}


def test_metric_names_are_read_from_expressions():
    expr = 'sum(rate(http_requests_total{status=~"5.."}[5m])) / sum by (queue) (rate(x_total[5m])) > 0.05'
    assert metric_names(expr) == {"http_requests_total", "x_total"}


def test_every_alert_watches_a_metric_the_code_exports():
    exported = exported_names()
    for rule in alerts():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exported, f"{rule['alert']} watches {sorted(names - exported)}, which no code registers"


def test_a_misspelt_metric_would_be_caught():
    assert not metric_names("max(outbox_oldest_unpublished_age) > 300") <= exported_names()


def annotations(alert: str, **values: str) -> dict:
    """The alert's annotations as Prometheus renders them, each `{{ $value | f }}` as `values[f]`."""
    raw = next(rule for rule in alerts() if rule["alert"] == alert)["annotations"]
    return {k: re.sub(r"\{\{ \$value \| (\w+) \}\}", lambda m: values[m.group(1)], v) for k, v in raw.items()}


def promtool_case(*, errors_per_minute: int, key_ok: str, relay: bool) -> list[dict]:
    api = 'http_requests_total{route="api/v1/emails/sent-email/",method="POST",status="%s"}'
    outbox = [  # a relay reading the outbox every minute (promtool's clock starts at 0)
        {"series": "outbox_oldest_unpublished_age_seconds", "values": "0x40"},
        {"series": "outbox_stats_updated_timestamp_seconds", "values": "0+60x40"},
    ]
    return (outbox if relay else []) + [
        {"series": api % "202", "values": f"0+{100 - errors_per_minute}x40"},
        {"series": api % "500", "values": f"0+{errors_per_minute}x40"},
        {"series": 'sender_provider_key_ok{pod="s1"}', "values": key_ok},
        {"series": 'sender_provider_key_ok{pod="s2"}', "values": "1x40"},
    ]


def test_promtool_sees_the_alerts_fire_on_bad_series_and_stay_quiet_on_good_ones(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": prometheus_rule()["spec"]["groups"]}))
    firing = [
        {
            "eval_time": "30m",
            "alertname": alert,
            "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations(alert, **values)}],
        }
        for alert, labels, values in [
            ("EmailsApiErrors", {"severity": "critical"}, {"humanizePercentage": "20%"}),
            ("EmailsSenderKeyRejected", {"severity": "critical"}, {}),
            ("EmailsRelaysSilent", {"severity": "critical"}, {}),
        ]
    ]
    quiet = [
        {"eval_time": "30m", "alertname": a, "exp_alerts": []}
        for a in ("EmailsApiErrors", "EmailsSenderKeyRejected", "EmailsRelaysSilent")
    ]
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": promtool_case(errors_per_minute=20, key_ok="1x10 0x30", relay=False),
                "alert_rule_test": firing,
            },
            {
                "interval": "1m",
                "input_series": promtool_case(errors_per_minute=1, key_ok="1x40", relay=True),
                "alert_rule_test": quiet,
            },
        ],
    }
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests))
    tested = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
