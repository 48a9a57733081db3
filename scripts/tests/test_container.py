"""Static checks of the container files (no Docker engine needed): the Dockerfile builds the
three binaries into a non-root runtime image, compose.yaml runs the stack as documented, and
every variable the compose file and the chart set is documented in the README.

Run: python3 -m unittest discover -s scripts/tests -p 'test_*.py'   (scripts/test-ops.sh)
"""

from __future__ import annotations

import base64
import re
import unittest
from pathlib import Path

import helm_python as helm

ROOT = Path(__file__).resolve().parents[2]
BINARIES = ("slotq-ingress", "slotq-workers", "slotq-scheduler")
SERVICES = {"ingress": "slotq-ingress", "workers": "slotq-workers",
            "scheduler": "slotq-scheduler"}


def documented_variables() -> set[str]:
    """Names in the first column of the README's configuration table."""
    readme = (ROOT / "README.md").read_text()
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)`", readme, flags=re.MULTILINE))


class Dockerfile(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.text = (ROOT / "Dockerfile").read_text()
        cls.stages = re.split(r"(?m)^FROM ", cls.text)[1:]

    def test_is_multi_stage_and_builds_the_three_binaries(self) -> None:
        self.assertGreaterEqual(len(self.stages), 2)
        build = self.stages[0]
        self.assertIn("cargo build --release --locked", build)
        for binary in BINARIES:
            self.assertIn(f"--bin {binary}", build)
            self.assertIn(f"target/release/{binary}", build)
            # The binary is a real package of the workspace.
            crate = binary.removeprefix("slotq-")
            manifest = (ROOT / crate / "Cargo.toml").read_text()
            self.assertIn(f'name = "{binary}"', manifest)

    def test_the_runtime_image_is_small_and_runs_as_non_root(self) -> None:
        runtime = self.stages[-1]
        base = runtime.splitlines()[0]
        self.assertTrue("distroless" in base or "slim" in base, base)
        users = re.findall(r"(?m)^USER\s+(\S+)", runtime)
        self.assertTrue(users, "the runtime stage sets USER")
        uid = users[-1].split(":")[0]
        self.assertNotIn(uid, {"0", "root"})
        self.assertIn("COPY --from=build", runtime)
        self.assertIn("0.0.0.0:8080", runtime, "listens on all interfaces in a container")

    def test_the_build_context_leaves_out_build_output(self) -> None:
        ignored = (ROOT / ".dockerignore").read_text().split()
        self.assertIn("target/", ignored)
        self.assertIn(".git/", ignored)


class Compose(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.compose = helm.values_from_yaml((ROOT / "compose.yaml").read_text())
        cls.services = cls.compose["services"]

    def test_has_the_engines_and_the_three_services(self) -> None:
        for name in ("postgres", "redis", "kafka", "migrate", *SERVICES):
            self.assertIn(name, self.services)

    def test_redis_keeps_the_queue_on_disk(self) -> None:
        command = self.services["redis"]["command"]
        self.assertEqual(command[command.index("--appendonly") + 1], "yes")
        self.assertIn("/data", " ".join(self.services["redis"]["volumes"]))

    def test_kafka_runs_in_kraft_mode(self) -> None:
        env = self.services["kafka"]["environment"]
        self.assertEqual(set(env["KAFKA_PROCESS_ROLES"].split(",")), {"broker", "controller"})
        self.assertNotIn("KAFKA_ZOOKEEPER_CONNECT", env)
        # kafka-storage format wants a base64 UUID as cluster id.
        cluster_id = env["CLUSTER_ID"]
        self.assertEqual(len(base64.urlsafe_b64decode(cluster_id + "==")), 16)

    def test_slotq_services_share_one_hardened_image_and_wait_for_migrations(self) -> None:
        images = set()
        for service, binary in {**SERVICES, "migrate": "slotq-ingress"}.items():
            s = self.services[service]
            images.add(s["image"])
            self.assertEqual(s["command"][0], binary, service)
            self.assertNotIn(s["user"].split(":")[0], {"0", "root"}, service)
            self.assertIs(s["read_only"], True, service)
            self.assertEqual(s["cap_drop"], ["ALL"], service)
            env = s["environment"]
            self.assertTrue(env["DATABASE_URL"].startswith("postgres://"), service)
            self.assertTrue(env["REDIS_URL"].startswith("redis://redis:"), service)
        self.assertEqual(len(images), 1)
        self.assertEqual(self.services["migrate"]["command"], ["slotq-ingress", "migrate"])
        for service in SERVICES:
            depends = self.services[service]["depends_on"]
            self.assertEqual(depends["migrate"]["condition"], "service_completed_successfully")
        self.assertEqual(self.services["ingress"]["environment"]["HTTP_ADDR"], "0.0.0.0:8080")
        for service in SERVICES:
            self.assertTrue(self.services[service]["environment"]["ADMIN_ADDR"]
                            .startswith("0.0.0.0:"))

    def test_every_variable_set_is_documented(self) -> None:
        documented = documented_variables()
        self.assertIn("DATABASE_URL", documented)
        for service in (*SERVICES, "migrate"):
            for var in self.services[service]["environment"]:
                self.assertIn(var, documented, f"compose.yaml {service}: {var}")
        values = helm.Chart.load(ROOT / "helm" / "slotq").values
        chart_vars = set(values["config"])
        for component in SERVICES:
            chart_vars |= set(values[component].get("env") or {})
        chart_vars |= {"SHUTDOWN_DELAY_MS", "HTTP_ADDR", "ADMIN_ADDR", "REDIS_NAMESPACE",
                       "KAFKA_BROKERS", "PAYMENT_WEBHOOK_SECRET"}
        for var in chart_vars:
            self.assertIn(var, documented, f"helm values: {var}")


if __name__ == "__main__":
    unittest.main()
