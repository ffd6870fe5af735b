"""The compose stack on a real Docker engine: one upgrade under load, checked end to end.

    python scripts/docker/smoke.py --deploy-dir DIR   # DIR: a copy of deploy/ with its secrets

Brings the stack up (`docker-compose -p mlnode-smoke up -d`), waits for every container to be
healthy (or, for `provision`, exited 0), proposes the new version with the CLI
(`mlnode-upgrade propose --submit`), sends ~10 inference requests/s through the broker across the
switch, and checks: the switch at the plan's height (registry /history), the old version STOPPED
and the new one serving on every node (asked through each node's nginx), no failed request,
requests served per version (`x-mlnode-version`), rollback refused without the admin token and
accepted with it. Then `docker-compose down -v`. Prints a summary with the time of each part and
exits non-zero if anything is wrong. Run by scripts/docker/compose-smoke.sh (`make docker-smoke`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cli.demo import LoadStats, _all_serving, _load  # noqa: E402  (the demo's own load and checks)
from shared.chain_status import parse_status_reply  # noqa: E402

CLI = str(REPO / ".venv" / "bin" / "mlnode-upgrade")
RPC = "http://127.0.0.1:26657"
REGISTRY = "http://127.0.0.1:8081"
BROKER = "http://127.0.0.1:8082"
OLD, NEW = "v3.0.6", "v3.0.8"
NODES = {"node-1": "inference-1", "node-2": "inference-2"}
VOTING_PERIOD_BLOCKS = 10  # MOCK_CHAIN_VOTING_PERIOD_BLOCKS in the compose file


class Smoke:
    def __init__(self, deploy_dir: Path, project: str, rps: float, lead_blocks: int, keep: bool) -> None:
        self.deploy_dir = deploy_dir
        self.project = project
        self.rps = rps
        self.lead_blocks = lead_blocks
        self.keep = keep
        self.docker = os.environ.get("DOCKER", "/usr/bin/docker")
        self.timings: dict[str, float] = {}
        self.problems: list[str] = []
        self.facts: dict[str, Any] = {}

    # -- helpers ---------------------------------------------------------------------------
    def compose(
        self, *args: str, check: bool = True, capture: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["docker-compose", "-p", self.project, "-f", str(self.deploy_dir / "docker-compose.yml"), *args]
        result = subprocess.run(cmd, capture_output=capture, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr[-2000:]}")
        return result

    def part(self, name: str, started: float) -> None:
        self.timings[name] = round(time.monotonic() - started, 2)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {self.timings[name]}s", flush=True)

    def containers(self) -> list[dict[str, Any]]:
        ids = self.compose("ps", "-q", "-a").stdout.split()
        if not ids:
            return []
        out = subprocess.run([self.docker, "inspect", *ids], capture_output=True, text=True, check=True)
        return list(json.loads(out.stdout))

    @staticmethod
    def health_of(c: dict[str, Any]) -> str:
        state = c["State"]
        if state.get("Health"):
            return str(state["Health"]["Status"])  # starting | healthy | unhealthy
        if state["Status"] == "exited":
            return f"exited({state['ExitCode']})"
        return str(state["Status"])

    def proxy_get(self, node: str, path: str) -> Any:
        """GET through the node's nginx, from inside its container: what the broker reaches."""
        result = self.compose(
            "exec", "-T", NODES[node], "wget", "-q", "-O", "-", f"http://127.0.0.1:8080{path}", check=False
        )
        try:
            return json.loads(result.stdout)
        except ValueError:
            return {"error": result.stderr.strip() or result.stdout.strip()}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, *args], capture_output=True, text=True, cwd=REPO)

    # -- the parts -------------------------------------------------------------------------
    def up(self) -> None:
        version = subprocess.run(
            [self.docker, "version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        compose_version = subprocess.run(
            ["docker-compose", "version", "--short"], capture_output=True, text=True
        ).stdout.strip()
        self.facts["engine"] = f"dockerd {version}, docker-compose {compose_version}"
        print(f"engine: {self.facts['engine']} at {os.environ.get('DOCKER_HOST', 'the default socket')}")
        t = time.monotonic()
        self.compose("up", "-d", "--no-build")
        self.part("compose up -d", t)

    def wait_healthy(self, timeout_s: float = 120.0) -> None:
        t = time.monotonic()
        deadline = t + timeout_s
        while True:
            cs = self.containers()
            health = {c["Config"]["Labels"]["com.docker.compose.service"]: self.health_of(c) for c in cs}
            done = bool(health) and all(h in ("healthy", "exited(0)") for h in health.values())
            if done and len(health) >= 12:  # 11 long-running services + provision
                break
            bad = {
                s: h
                for s, h in health.items()
                if h == "unhealthy" or (h.startswith("exited") and h != "exited(0)")
            }
            if bad or time.monotonic() > deadline:
                self.facts["compose_health"] = health
                self.compose("logs", "--tail", "30", check=False, capture=False)
                raise RuntimeError(f"stack not healthy within {timeout_s}s: {health}")
            time.sleep(0.5)  # polling container health, with the deadline above
        self.facts["compose_health"] = health
        self.part("every container healthy", t)
        for service in sorted(health):
            print(f"  {service:18} {health[service]}")

    async def upgrade(self) -> None:
        stats = LoadStats()
        async with httpx.AsyncClient(timeout=5.0) as client:

            async def get(url: str) -> Any:
                try:
                    return (await client.get(url)).json()
                except (httpx.HTTPError, ValueError):
                    return None

            async def height() -> int:
                status = await get(f"{RPC}/status")
                try:
                    return parse_status_reply(status).height
                except (TypeError, KeyError, ValueError):
                    return 0

            t = time.monotonic()
            deadline = t + 60
            while not _all_serving(await get(f"{BROKER}/upgrade/status"), OLD, len(NODES)):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the nodes did not serve {OLD} within 60s: {await get(f'{BROKER}/upgrade/status')}"
                    )
                await asyncio.sleep(0.2)  # polling the broker with a deadline
            self.part(f"every node serves {OLD}", t)

            stop = asyncio.Event()
            load = asyncio.create_task(_load(BROKER, self.rps, stop, stats))
            t_load = time.monotonic()

            # Propose with the CLI, like an operator against the mock chain.
            t = time.monotonic()
            target = await height() + VOTING_PERIOD_BLOCKS + self.lead_blocks
            proposed = await asyncio.to_thread(
                self.cli,
                "propose",
                "--height", str(target),
                "--node-version", NEW,
                "--deposit", "10000000ngonka",
                "--rpc", RPC,
                "--voting-period-blocks", str(VOTING_PERIOD_BLOCKS),
                "--submit", RPC,
            )  # fmt: skip
            if proposed.returncode != 0:
                stop.set()
                await load
                raise RuntimeError(f"propose failed: {proposed.stderr or proposed.stdout}")
            self.facts["plan_height"] = target
            print(f"proposed {NEW} at height {target} (now {await height()}); load {self.rps:g}/s")
            self.part("propose --submit", t)

            t = time.monotonic()
            block_seen: float | None = None
            ready_at: float | None = None
            deadline = time.monotonic() + (target - await height()) * 2 + 60
            while True:
                h = await height()
                if block_seen is None and h >= target:
                    block_seen = time.monotonic()
                    self.part(f"proposal to block {target}", t)
                state = await get(f"{REGISTRY}/state")
                if (
                    ready_at is None
                    and block_seen
                    and _all_serving(await get(f"{BROKER}/upgrade/status"), NEW, len(NODES))
                ):
                    ready_at = time.monotonic()
                if ready_at and state and state.get("last_used_version") == NEW:
                    break
                if time.monotonic() > deadline:
                    self.problems.append(f"not every node served {NEW} by height {h} (registry {state})")
                    break
                await asyncio.sleep(0.1)  # polling chain, registry and broker with a deadline
            if block_seen and ready_at:
                name = f"block {target} to every node on {NEW}"
                self.timings[name] = round(ready_at - block_seen, 2)
                print(f"[{time.strftime('%H:%M:%S')}] {name}: {self.timings[name]}s", flush=True)
            await asyncio.sleep(3.0)  # keep the load on across and after the switch
            stop.set()
            await load
            self.part("load (whole run)", t_load)

            history = await get(f"{REGISTRY}/history")
            switches = [x for x in (history or {}).get("transitions", []) if x.get("current") == NEW]
            switch_height = switches[-1]["height"] if switches else None
            self.facts["switch_height"] = switch_height
            if switch_height != target:
                self.problems.append(f"switch at height {switch_height}, the plan said {target}")

        self.facts["requests_sent"] = stats.sent
        self.facts["requests_by_version"] = dict(stats.ok_by_version)
        self.facts["failed"] = len(stats.failures)
        self.facts["failures"] = stats.failures[:10]
        lat = sorted(stats.latencies_ms)
        if lat:
            self.facts["latency_ms_p50_p99"] = (
                round(lat[len(lat) // 2], 1),
                round(lat[int(len(lat) * 0.99) - 1], 1),
            )
        if stats.failures:
            self.problems.append(f"{len(stats.failures)} requests failed: {stats.failures[:3]}")
        if not stats.ok_by_version.get(NEW) or not stats.ok_by_version.get(OLD):
            self.problems.append(
                f"requests by version {dict(stats.ok_by_version)}: both versions should serve"
            )

    def node_states(self) -> None:
        t = time.monotonic()
        old_state, new_state = {}, {}
        for node in NODES:
            old_state[node] = self.proxy_get(node, f"/{OLD}/api/v1/state").get("state")
            new_state[node] = self.proxy_get(node, f"/{NEW}/api/v1/state").get("state")
            if old_state[node] != "STOPPED":
                self.problems.append(f"{node}: {OLD} is {old_state[node]}, not STOPPED")
            if new_state[node] != "INFERENCE":
                self.problems.append(f"{node}: {NEW} is {new_state[node]}, not INFERENCE")
        self.facts["old_state"] = old_state
        self.facts["new_state"] = new_state
        self.part("node states through nginx", t)

    def rollback(self) -> None:
        t = time.monotonic()
        lines = (self.deploy_dir / ".env").read_text().splitlines()
        env = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
        token_file = self.deploy_dir / ".registry-admin-token"
        token_file.write_text(env["REGISTRY_ADMIN_TOKEN"].replace("$$", "$"))
        token_file.chmod(0o600)
        empty_run_dir = self.deploy_dir / ".no-stack"  # no local stack here, so no token to fall back on
        common = ["rollback", "--version", OLD, "--reason", "compose smoke", "--actor", "smoke"]
        common += ["--registry-url", REGISTRY, "--run-dir", str(empty_run_dir)]
        refused = self.cli(*common)
        wrong_file = self.deploy_dir / ".wrong-token"
        wrong_file.write_text("not-the-token")
        wrong = self.cli(*common, "--token-file", str(wrong_file))
        accepted = self.cli(*common, "--token-file", str(token_file))
        self.facts["rollback_without_token"] = f"exit {refused.returncode}: {refused.stderr.strip()[:160]}"
        self.facts["rollback_wrong_token"] = f"exit {wrong.returncode}: {wrong.stderr.strip()[:160]}"
        self.facts["rollback_with_token"] = f"exit {accepted.returncode}"
        if refused.returncode == 0:
            self.problems.append("rollback without a token was accepted")
        if wrong.returncode == 0:
            self.problems.append("rollback with a wrong token was accepted")
        if accepted.returncode != 0:
            self.problems.append(f"rollback with the token failed: {accepted.stderr or accepted.stdout}")
        else:
            deadline = time.monotonic() + 30
            state: Any = None
            while time.monotonic() < deadline:
                try:
                    state = httpx.get(f"{REGISTRY}/state", timeout=3).json()
                except (httpx.HTTPError, ValueError):
                    state = None
                if state and state.get("current_version") == OLD:
                    break
                time.sleep(0.2)  # polling the registry with a deadline
            self.facts["registry_after_rollback"] = (state or {}).get("current_version")
            if (state or {}).get("current_version") != OLD:
                self.problems.append(f"after the rollback the registry says {state}")
        self.part("rollback (refused without token, accepted with it)", t)

    def down(self) -> None:
        t = time.monotonic()
        self.compose("down", "-v", "--remove-orphans", check=False)
        self.part("compose down -v", t)

    def summary(self, total: float) -> None:
        f = self.facts
        print("\n==== compose smoke summary ====")
        print(f"engine:               {f.get('engine')}")
        health = f.get("compose_health", {})
        healthy = sum(h == "healthy" for h in health.values())
        one_shot = sum(h == "exited(0)" for h in health.values())
        print(f"compose health:       {healthy} healthy, {one_shot} one-shot exited(0), of {len(health)}")
        print(f"plan / switch height: {f.get('plan_height')} / {f.get('switch_height')}")
        print(f"requests sent:        {f.get('requests_sent')} at {self.rps:g}/s")
        print(f"served per version:   {f.get('requests_by_version')}")
        print(f"failed:               failed={f.get('failed')}")
        print(f"latency p50/p99 ms:   {f.get('latency_ms_p50_p99')}")
        for node in NODES:
            old_state, new_state = f.get("old_state", {}).get(node), f.get("new_state", {}).get(node)
            print(f"{node}: {OLD} {old_state}, {NEW} {new_state}")
        print(f"rollback w/o token:   {f.get('rollback_without_token')}")
        print(f"rollback wrong token: {f.get('rollback_wrong_token')}")
        after = f.get("registry_after_rollback")
        print(f"rollback with token:  {f.get('rollback_with_token')} → registry current {after}")
        print("timings (s):")
        for name, seconds in self.timings.items():
            print(f"  {seconds:7.2f}  {name}")
        print(f"  {total:7.2f}  total")
        print("RESULT: " + ("OK" if not self.problems else "FAILED"))
        for p in self.problems:
            print(f"  problem: {p}")

    def run(self) -> int:
        started = time.monotonic()
        try:
            self.up()
            self.wait_healthy()
            asyncio.run(self.upgrade())
            self.node_states()
            self.rollback()
        except Exception as exc:  # report whatever broke, then tear down
            self.problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            if self.keep:
                print(f"--keep: leaving project {self.project} up")
            else:
                self.down()
        self.summary(time.monotonic() - started)
        return 0 if not self.problems else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deploy-dir", type=Path, required=True, help="deploy/ copy with .env and passwords")
    parser.add_argument("--project", default="mlnode-smoke")
    parser.add_argument("--rps", type=float, default=10.0)
    parser.add_argument("--lead-blocks", type=int, default=5, help="blocks after the voting period")
    parser.add_argument("--keep", action="store_true", help="leave the stack up at the end")
    args = parser.parse_args()
    return Smoke(args.deploy_dir, args.project, args.rps, args.lead_blocks, args.keep).run()


if __name__ == "__main__":
    sys.exit(main())
