"""cluster/grafana: the dashboards load, reference only catalogued metrics, cover every domain, and are provisioned."""

import json
import re
from pathlib import Path

import pytest
import yaml

from x0tta6bl4.observability.metrics import CATALOGUE

GRAFANA = Path(__file__).resolve().parents[3] / "cluster" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
#: A platform metric as a query names it: optional ray_ prefix, and the exporters' suffixes.
METRIC = re.compile(r"(?:ray_)?(x0tta6bl4_[a-z0-9_]+?)(?:_total|_bucket|_sum|_count)?(?=[^a-z0-9_]|$)")


def panel_queries():
    """(dashboard file, panel title, PromQL) for every target of every panel."""
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            out += [(path.name, panel["title"], target["expr"]) for target in panel["targets"]]
    return out


def referenced_metrics(expr):
    # A name regex such as {__name__=~"(ray_)?x0tta6bl4_ledger_appends_total"} names its metric too.
    return {m.group(1) for m in METRIC.finditer(expr.replace("(ray_)?", ""))}


def test_the_five_dashboards_exist_with_unique_uids_and_a_datasource_variable():
    names = {p.stem for p in DASHBOARDS}
    assert names == {"overview", "mesh", "ml-pipeline", "security", "autonomy"}
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        assert [v["name"] for v in dash["templating"]["list"]] == ["datasource"], path.name
        ids = [p["id"] for p in dash["panels"]]
        assert len(set(ids)) == len(ids), path.name
        for panel in dash["panels"]:
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]


@pytest.mark.parametrize(("dashboard", "title", "expr"), panel_queries())
def test_every_query_names_only_catalogued_metrics(dashboard, title, expr):
    names = referenced_metrics(expr)
    assert names, f"{dashboard} / {title}: no platform metric in {expr}"
    unknown = names - set(CATALOGUE)
    assert not unknown, f"{dashboard} / {title}: {sorted(unknown)} are not in the catalogue"


def test_the_metric_name_pattern_strips_prefix_and_suffixes():
    # The check above must be able to fail: a made-up name stays unknown, real ones map back.
    expr = "sum(rate(ray_x0tta6bl4_mesh_ticks_total[1m])) + rate(x0tta6bl4_no_such_thing_total[1m])"
    assert referenced_metrics(expr) == {"x0tta6bl4_mesh_ticks", "x0tta6bl4_no_such_thing"}
    bucket = "histogram_quantile(0.9, sum by (le) (rate(ray_x0tta6bl4_mesh_step_seconds_bucket[1m])))"
    assert referenced_metrics(bucket) == {"x0tta6bl4_mesh_step_seconds"}


def test_the_dashboards_cover_every_domain_of_the_catalogue():
    shown = set().union(*(referenced_metrics(expr) for _, _, expr in panel_queries()))
    domains = {spec.domain for spec in CATALOGUE.values()}
    covered = {CATALOGUE[name].domain for name in shown}
    assert covered == domains, f"no panel for {sorted(domains - covered)}"


def test_provisioning_loads_the_dashboards_folder_and_one_prometheus_datasource():
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "x0tta6bl4.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].endswith("/x0tta6bl4")
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
