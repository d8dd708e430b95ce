"""Every process's /metrics is scrapable from the monitoring namespace only: the pods say where
(prometheus.io/* annotations), the NetworkPolicy lets monitoring reach exactly those ports, and no
Service or route leads to them."""

from tests.deploy.test_manifests import containers, render

SCRAPED = {"command-api", "query-api", "outbox-relay", "sender", "projector", "notifier"}


def test_every_service_is_scraped_on_a_port_only_monitoring_reaches():
    objects = render("base")
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    policy = next(
        o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "metrics-from-monitoring"
    )
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    allowed_ports = {p["port"] for p in rule["ports"]}
    selected = set(policy["spec"]["podSelector"]["matchExpressions"][0]["values"])
    service_ports = [p for o in objects if o["kind"] == "Service" for p in o["spec"]["ports"]]
    scraped = {}
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        annotations = obj["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            scraped[obj["metadata"]["name"]] = int(annotations["prometheus.io/port"])
            assert annotations["prometheus.io/path"] == "/metrics"
    assert set(scraped) == SCRAPED
    assert scraped["command-api"] == scraped["query-api"] == int(config["API_METRICS_PORT"])
    assert set(scraped.values()) <= allowed_ports
    assert SCRAPED.issubset(selected)
    # No Service (so no route, which only leads to Services) reaches a metrics port.
    named = {p["name"]: p["containerPort"] for _, c in containers(objects) for p in c.get("ports", []) if "name" in p}
    reached = {named.get(p["targetPort"], p["targetPort"]) for p in service_ports} | {p["port"] for p in service_ports}
    assert not reached & set(scraped.values())
