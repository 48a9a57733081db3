"""Lints and renders the slotq chart with Helm's own engine (PyPI `helm-python-sdk`, which
wraps Helm 4's Go SDK) and checks what matters in the manifests: probes, resources, no root,
read-only root file systems, the migration hook, secrets handling, autoscaling and the
optional monitoring objects.

Run: python3 -m unittest discover -s helm/tests -p 'test_*.py'   (scripts/test-ops.sh)
"""

from __future__ import annotations

import json
import re
import unittest
from pathlib import Path
from typing import Any

import helm_python as helm

helm.disable_logging()

CHART = Path(__file__).resolve().parent.parent / "slotq"
RELEASE = "rel"
NAMESPACE = "prod"
# The smallest values a real install needs: where PostgreSQL and Redis are.
MINIMAL = {
    "postgresql": {"url": "postgres://slotq:pw@pg.example:5432/slotq"},
    "redis": {"url": "redis://:pw@redis.example:6379"},
}
COMPONENTS = ("ingress", "workers", "scheduler")


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A deep merge of `extra` over `base` (neither is modified)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object the chart renders with MINIMAL + `values`, parsed by Helm's YAML."""
    chart = helm.Chart.load(CHART)
    manifests = chart.render(merge(MINIMAL, values or {}), name=RELEASE, namespace=NAMESPACE)
    objects = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in re.split(r"(?m)^---\s*$", text):
            obj = helm.values_from_yaml(doc) if doc.strip() else {}
            if obj:
                obj["__template"] = path
                objects.append(obj)
    return objects


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def name(component: str) -> str:
    return f"{RELEASE}-slotq-{component}"


class Lint(unittest.TestCase):
    def test_the_chart_lints_strictly_clean(self) -> None:
        report = helm.lint(CHART, MINIMAL, strict=True, namespace=NAMESPACE)
        self.assertEqual(report["errors"], [])
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        self.assertEqual(problems, [], report)

    def test_lint_reports_values_the_schema_refuses(self) -> None:
        report = helm.lint(CHART, merge(MINIMAL, {"config": {"LOG_FORMAT": "xml"}}),
                           namespace=NAMESPACE)
        self.assertNotEqual(report["errors"], [])
        self.assertIn("LOG_FORMAT", json.dumps(report))


class Schema(unittest.TestCase):
    """values.schema.json refuses what would deploy something broken or unsafe."""

    def assert_refused(self, values: dict[str, Any], fragment: str) -> None:
        chart = helm.Chart.load(CHART)
        with self.assertRaises(helm.HelmValuesError) as refused:
            chart.validate_schema(merge(MINIMAL, values))
        self.assertIn(fragment, str(refused.exception))

    def test_defaults_are_valid(self) -> None:
        helm.Chart.load(CHART).validate_schema(MINIMAL)

    def test_unsafe_or_broken_values_are_refused(self) -> None:
        self.assert_refused({"config": {"LOG_FORMAT": "xml"}}, "LOG_FORMAT")
        self.assert_refused({"config": {"DATABASE_URL": "postgres://x"}}, "DATABASE_URL")
        self.assert_refused({"workers": {"env": {"PII_KEYS": "k1:AAAA"}}}, "PII_KEYS")
        self.assert_refused({"securityContext": {"readOnlyRootFilesystem": False}},
                            "readOnlyRootFilesystem")
        self.assert_refused({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot")
        self.assert_refused({"workers": {"keda": {"minReplicaCount": 0}}}, "minReplicaCount")
        self.assert_refused({"workers": {"keda": {"trigger": "cpu"}}}, "trigger")
        self.assert_refused({"ingress": {"resources": {"requests": None}}},
                            "requests")
        self.assert_refused({"redis": {"url": "http://redis:6379"}}, "/redis/url")
        self.assert_refused({"replicaCount": 3}, "replicaCount")


class Workloads(unittest.TestCase):
    """The three Deployments and the migration Job."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.objects = render()
        cls.deployments = of_kind(cls.objects, "Deployment")

    def pod_specs(self) -> dict[str, dict[str, Any]]:
        specs = {n: d["spec"]["template"]["spec"] for n, d in self.deployments.items()}
        for job in of_kind(self.objects, "Job").values():
            specs[job["metadata"]["name"]] = job["spec"]["template"]["spec"]
        return specs

    def test_one_deployment_per_process_from_one_image(self) -> None:
        self.assertEqual(set(self.deployments), {name(c) for c in COMPONENTS})
        commands = {}
        images = set()
        for component in COMPONENTS:
            (container,) = self.deployments[name(component)]["spec"]["template"]["spec"][
                "containers"
            ]
            commands[component] = container["command"]
            images.add(container["image"])
        self.assertEqual(commands["ingress"], ["slotq-ingress", "serve"])
        self.assertEqual(commands["workers"], ["slotq-workers", "run"])
        self.assertEqual(commands["scheduler"], ["slotq-scheduler", "run"])
        self.assertEqual(images, {"ghcr.io/slotq/slotq:0.1.0"})

    def test_every_container_has_liveness_and_readiness_probes_on_its_port(self) -> None:
        for deployment, spec in ((n, d["spec"]["template"]["spec"])
                                 for n, d in self.deployments.items()):
            for c in spec["containers"]:
                ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/healthz", deployment)
                self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz", deployment)
                self.assertIn("startupProbe", c, deployment)
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    self.assertIn(c[probe]["httpGet"]["port"], ports, (deployment, probe))
                # Every process serves its admin port (/metrics); the ingress also its API
                # port. Each listens where the chart declares the port, on all interfaces.
                self.assertEqual(env["ADMIN_ADDR"], f"0.0.0.0:{ports['admin']}", deployment)
                if "http" in ports:
                    self.assertEqual(env["HTTP_ADDR"], f"0.0.0.0:{ports['http']}", deployment)
                    # Traffic arrives on http: that is where readiness must be checked.
                    self.assertEqual(c["readinessProbe"]["httpGet"]["port"], "http")

    def test_every_container_has_cpu_and_memory_requests_and_a_memory_limit(self) -> None:
        for pod, spec in self.pod_specs().items():
            for c in spec["containers"]:
                resources = c["resources"]
                self.assertTrue(resources["requests"]["cpu"], pod)
                self.assertTrue(resources["requests"]["memory"], pod)
                self.assertTrue(resources["limits"]["memory"], pod)

    def test_no_pod_runs_as_root_or_writes_its_root_file_system(self) -> None:
        for pod, spec in self.pod_specs().items():
            security = spec["securityContext"]
            self.assertIs(security["runAsNonRoot"], True, pod)
            self.assertNotEqual(security.get("runAsUser", 0), 0, pod)
            self.assertEqual(security["seccompProfile"]["type"], "RuntimeDefault", pod)
            self.assertIs(spec["automountServiceAccountToken"], False, pod)
            for c in spec["containers"]:
                sc = c["securityContext"]
                self.assertIs(sc["readOnlyRootFilesystem"], True, pod)
                self.assertIs(sc["allowPrivilegeEscalation"], False, pod)
                self.assertEqual(sc["capabilities"]["drop"], ["ALL"], pod)
                self.assertNotEqual(sc.get("runAsUser", 1), 0, pod)
                self.assertFalse(sc.get("privileged", False), pod)

    def test_ingress_drains_before_its_pod_is_killed(self) -> None:
        spec = self.deployments[name("ingress")]["spec"]["template"]["spec"]
        env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
        delay_s = int(env["SHUTDOWN_DELAY_MS"]) / 1000
        self.assertGreater(delay_s, 0)
        self.assertGreater(spec["terminationGracePeriodSeconds"], delay_s + 30,
                           "the grace period covers the delay and a 30 s long poll")

    def test_configuration_comes_from_the_configmap_and_the_secret(self) -> None:
        secret = of_kind(self.objects, "Secret")[f"{RELEASE}-slotq"]
        self.assertEqual(secret["stringData"]["DATABASE_URL"], MINIMAL["postgresql"]["url"])
        self.assertEqual(secret["stringData"]["REDIS_URL"], MINIMAL["redis"]["url"])
        config = of_kind(self.objects, "ConfigMap")[f"{RELEASE}-slotq"]
        self.assertEqual(config["data"]["REDIS_NAMESPACE"], "slotq")
        self.assertEqual(config["data"]["LOG_FORMAT"], "json")
        self.assertNotIn("DATABASE_URL", config["data"])
        for d in self.deployments.values():
            env_from = d["spec"]["template"]["spec"]["containers"][0]["envFrom"]
            self.assertIn({"configMapRef": {"name": f"{RELEASE}-slotq"}}, env_from)
            self.assertIn({"secretRef": {"name": f"{RELEASE}-slotq"}}, env_from)

    def test_migrations_run_as_a_pre_install_and_pre_upgrade_hook(self) -> None:
        job = of_kind(self.objects, "Job")[name("migrations")]
        annotations = job["metadata"]["annotations"]
        self.assertEqual(annotations["helm.sh/hook"], "pre-install,pre-upgrade")
        (container,) = job["spec"]["template"]["spec"]["containers"]
        self.assertEqual(container["command"], ["slotq-ingress", "migrate"])
        self.assertEqual(job["spec"]["template"]["spec"]["restartPolicy"], "Never")
        # The chart's Secret does not exist yet at pre-install: the Job reads a hook Secret
        # created just before it.
        (secret_ref,) = container["envFrom"]
        secret_name = secret_ref["secretRef"]["name"]
        self.assertNotEqual(secret_name, f"{RELEASE}-slotq")
        hook_secret = of_kind(self.objects, "Secret")[secret_name]
        self.assertEqual(hook_secret["stringData"]["DATABASE_URL"], MINIMAL["postgresql"]["url"])
        hook_annotations = hook_secret["metadata"]["annotations"]
        self.assertEqual(hook_annotations["helm.sh/hook"], "pre-install,pre-upgrade")
        self.assertLess(int(hook_annotations["helm.sh/hook-weight"]),
                        int(annotations["helm.sh/hook-weight"]))
        self.assertNotIn("serviceAccountName", job["spec"]["template"]["spec"],
                         "the chart's ServiceAccount does not exist yet at pre-install")

    def test_services_pdbs_and_hpa_select_the_right_pods(self) -> None:
        pod_labels = {n: d["spec"]["template"]["metadata"]["labels"]
                      for n, d in self.deployments.items()}

        def selects(selector: dict[str, str], deployment: str) -> bool:
            return all(pod_labels[deployment].get(k) == v for k, v in selector.items())

        services = of_kind(self.objects, "Service")
        self.assertEqual(set(services),
                         {name("ingress")} | {name(f"{c}-metrics") for c in COMPONENTS})
        for service_name, service in services.items():
            component = service_name.removeprefix(f"{RELEASE}-slotq-").removesuffix("-metrics")
            selected = [d for d in self.deployments if selects(service["spec"]["selector"], d)]
            self.assertEqual(selected, [name(component)], service_name)
        # The public Service exposes the API only; /metrics stays on the admin Services.
        public_ports = services[name("ingress")]["spec"]["ports"]
        self.assertEqual([p["targetPort"] for p in public_ports], ["http"])
        pdbs = of_kind(self.objects, "PodDisruptionBudget")
        self.assertEqual(set(pdbs), {name(c) for c in COMPONENTS})
        for component in COMPONENTS:
            selector = pdbs[name(component)]["spec"]["selector"]["matchLabels"]
            selected = [d for d in self.deployments if selects(selector, d)]
            self.assertEqual(selected, [name(component)])
        hpa = of_kind(self.objects, "HorizontalPodAutoscaler")[name("ingress")]
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], name("ingress"))
        self.assertEqual(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu")
        # The HPA owns the ingress replica count; the others have theirs.
        self.assertNotIn("replicas", self.deployments[name("ingress")]["spec"])
        self.assertEqual(self.deployments[name("workers")]["spec"]["replicas"], 2)

    def test_optional_objects_are_off_by_default(self) -> None:
        kinds = {o["kind"] for o in self.objects}
        for kind in ("ScaledObject", "ServiceMonitor", "PrometheusRule", "Ingress"):
            self.assertNotIn(kind, kinds)
        self.assertNotIn(f"{RELEASE}-slotq-dashboard", of_kind(self.objects, "ConfigMap"))


class Variants(unittest.TestCase):
    def test_an_existing_secret_replaces_the_charts_secrets(self) -> None:
        objects = render({"existingSecret": "slotq-credentials",
                          "postgresql": {"url": ""}, "redis": {"url": ""}})
        self.assertEqual(of_kind(objects, "Secret"), {})
        for d in of_kind(objects, "Deployment").values():
            env_from = d["spec"]["template"]["spec"]["containers"][0]["envFrom"]
            self.assertIn({"secretRef": {"name": "slotq-credentials"}}, env_from)
        job = of_kind(objects, "Job")[name("migrations")]
        env_from = job["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        self.assertEqual(env_from, [{"secretRef": {"name": "slotq-credentials"}}])

    def test_credentials_and_keys_go_to_the_secret_only(self) -> None:
        objects = render({"paymentWebhookSecret": "whsec_1", "auth": {"jwtHs256Secret": "jwt"},
                          "pii": {"keys": "k1:AAAA", "indexKey": "BBBB"}})
        secrets = of_kind(objects, "Secret")
        data = secrets[f"{RELEASE}-slotq"]["stringData"]
        self.assertEqual((data["PAYMENT_WEBHOOK_SECRET"], data["JWT_HS256_SECRET"],
                          data["PII_KEYS"], data["PII_INDEX_KEY"]),
                         ("whsec_1", "jwt", "k1:AAAA", "BBBB"))
        # The migration re-encrypts patient rows: its hook Secret carries the PII keys too.
        hook = secrets[f"{RELEASE}-slotq-migrations"]["stringData"]
        self.assertEqual((hook["PII_KEYS"], hook["PII_INDEX_KEY"]), ("k1:AAAA", "BBBB"))
        self.assertNotIn("JWT_HS256_SECRET", hook)
        rendered_config = json.dumps([o for o in objects if o["kind"] != "Secret"])
        for secret in ("whsec_1", "k1:AAAA", "BBBB"):
            self.assertNotIn(secret, rendered_config)

    def test_missing_credentials_fail_the_render_with_a_message(self) -> None:
        chart = helm.Chart.load(CHART)
        with self.assertRaises(helm.HelmRenderError) as failed:
            chart.render({}, name=RELEASE, namespace=NAMESPACE)
        self.assertIn("postgresql.url", str(failed.exception))

    def test_keda_scales_workers_on_both_apalis_queue_keys(self) -> None:
        objects = render({
            "redis": {"namespace": "clinic-a"},
            "workers": {"keda": {"enabled": True, "jobsPerReplica": 250,
                                 "redis": {"address": "redis.example:6379",
                                           "passwordSecret": {"name": "redis", "key": "pw"}}}},
        })
        scaled = of_kind(objects, "ScaledObject")[name("workers")]
        self.assertEqual(scaled["spec"]["scaleTargetRef"]["name"], name("workers"))
        self.assertGreaterEqual(scaled["spec"]["minReplicaCount"], 1)
        triggers = scaled["spec"]["triggers"]
        self.assertEqual({t["type"] for t in triggers}, {"redis"})
        # New jobs wait in the active LIST, apalis' retries in the scheduled ZSET.
        self.assertEqual({t["metadata"]["listName"] for t in triggers},
                         {"clinic-a:holds:scheduled", "clinic-a:holds:active"})
        for t in triggers:
            self.assertEqual(t["metadata"]["listLength"], "250")
            self.assertEqual(t["metadata"]["address"], "redis.example:6379")
            auth = of_kind(objects, "TriggerAuthentication")[t["authenticationRef"]["name"]]
            self.assertEqual(auth["spec"]["secretTargetRef"][0]["name"], "redis")
        # KEDA owns the worker replica count.
        self.assertNotIn("replicas", of_kind(objects, "Deployment")[name("workers")]["spec"])

    def test_keda_prometheus_trigger_reads_the_exported_depth(self) -> None:
        objects = render({"workers": {"keda": {
            "enabled": True, "trigger": "prometheus",
            "prometheus": {"serverAddress": "http://prometheus:9090"}}}})
        (trigger,) = of_kind(objects, "ScaledObject")[name("workers")]["spec"]["triggers"]
        self.assertEqual(trigger["type"], "prometheus")
        self.assertIn('slotq_queue_depth{namespace="prod"', trigger["metadata"]["query"])

    def test_keda_without_an_address_fails(self) -> None:
        chart = helm.Chart.load(CHART)
        with self.assertRaises(helm.HelmRenderError) as failed:
            chart.render(merge(MINIMAL, {"workers": {"keda": {"enabled": True}}}),
                         name=RELEASE, namespace=NAMESPACE)
        self.assertIn("workers.keda.redis.address", str(failed.exception))

    def test_monitoring_objects_when_enabled(self) -> None:
        objects = render({
            "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
                        "prometheusRule": {"enabled": True},
                        "grafanaDashboard": {"enabled": True}},
            "ingress": {"kubernetesIngress": {"enabled": True, "className": "nginx"}},
        })
        monitor = of_kind(objects, "ServiceMonitor")[f"{RELEASE}-slotq"]
        self.assertEqual(monitor["metadata"]["labels"]["release"], "kps")
        self.assertEqual([e["port"] for e in monitor["spec"]["endpoints"]], ["admin"])
        # It scrapes exactly the three metrics Services, on their admin port.
        selector = monitor["spec"]["selector"]["matchLabels"]
        scraped = {n for n, s in of_kind(objects, "Service").items()
                   if all(s["metadata"]["labels"].get(k) == v for k, v in selector.items())}
        self.assertEqual(scraped, {name(f"{c}-metrics") for c in COMPONENTS})
        for n in scraped:
            self.assertEqual(of_kind(objects, "Service")[n]["spec"]["ports"][0]["name"], "admin")
        # The PrometheusRule carries files/alerts.yaml unchanged.
        rule = of_kind(objects, "PrometheusRule")[f"{RELEASE}-slotq"]
        alerts = helm.values_from_yaml((CHART / "files" / "alerts.yaml").read_text())
        self.assertEqual(rule["spec"]["groups"], alerts["groups"])
        names = {r["alert"] for g in alerts["groups"] for r in g["rules"]}
        self.assertTrue({"QueueDepthHigh", "QueueStalled", "DecisionLatencyP99High",
                         "HoldExpiryLagging", "DeadJobs", "OutboxLagHigh",
                         "WebhookDeadLetters"} <= names)
        dashboard = of_kind(objects, "ConfigMap")[f"{RELEASE}-slotq-dashboard"]
        self.assertEqual(dashboard["metadata"]["labels"]["grafana_dashboard"], "1")
        panels = json.loads(dashboard["data"]["slotq.json"])["panels"]
        exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
        for metric in ("slotq_queue_depth", "slotq_booking_decisions_total",
                       "slotq_decision_latency_seconds_bucket", "slotq_expiry_lag_seconds_bucket"):
            self.assertIn(metric, exprs)
        ingress = of_kind(objects, "Ingress")[f"{RELEASE}-slotq"]
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        self.assertEqual(backend, {"name": name("ingress"), "port": {"name": "http"}})


if __name__ == "__main__":
    unittest.main()
