"""The library against Redis Cluster: a one-node cluster of our own (all 16384 slots).

One node is enough to check what Cluster demands of us: every multi-key command and
script must keep its keys in one slot (Redis answers CROSSSLOT otherwise, on any number
of nodes), and the clients must work through redis-py's RedisCluster.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import free_port, read_records, stop_all, wait_until
from redis.cluster import RedisCluster

from prefork_work.app import App
from prefork_work.client import Client
from prefork_work.embedded import find_redis_server
from prefork_work.enqueuer import Enqueuer
from prefork_work.errors import ConfigError, RedisUnavailable
from prefork_work.job import Job
from prefork_work.keys import Keys, has_hash_tag
from prefork_work.loops.requeuer import Requeuer
from prefork_work.store.pools import PoolStore
from prefork_work.worker import Worker

NS = "{pw}"
K = Keys(NS)


class ClusterNode:
    """One redis-server in cluster mode holding every slot; it keeps its slots across a restart
    (nodes.conf), not its data."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port(bus=True)  # the cluster bus listens on port + 10000
        self.argv = [
            find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--cluster-enabled", "yes", "--cluster-config-file", str(directory / "nodes.conf"),
            "--save", "", "--appendonly", "no", "--dir", str(directory),
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self.admin = redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_until(lambda: _ping(self.admin), 10, message="the cluster node")
        if not int(self.admin.cluster("info")["cluster_slots_assigned"]):
            self.admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        wait_until(lambda: self.admin.cluster("info")["cluster_state"] == "ok", 15, 0.05,
                   "cluster ok")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture(scope="module")
def cluster_node(tmp_path_factory) -> Iterator[ClusterNode]:
    node = ClusterNode(tmp_path_factory.mktemp("cluster"))
    try:
        node.start()
        yield node
    finally:
        node.kill()


@pytest.fixture(scope="module")
def cluster(cluster_node: ClusterNode) -> Iterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=cluster_node.port, socket_timeout=5)
    yield client
    client.close()


def _enqueue_when_up(enqueuer: Enqueuer, name: str) -> Job | None:
    try:
        return enqueuer.enqueue(name, {})
    except RedisUnavailable:
        return None


def _ping(node) -> bool:
    try:
        return bool(node.ping())
    except Exception:
        return False


@pytest.fixture
def rc(cluster: RedisCluster) -> RedisCluster:
    cluster.flushall()
    return cluster


def test_hash_tag_rule() -> None:
    assert has_hash_tag("{pw}") and has_hash_tag("app{pw}") and has_hash_tag("{a}{b}")
    assert not has_hash_tag("pw") and not has_hash_tag("{}pw{x}") and not has_hash_tag("pw{")


def test_namespace_without_hash_tag_is_refused(rc) -> None:
    with pytest.raises(ConfigError, match="hash tag"):
        Enqueuer("pw", rc)


def test_enqueue_work_requeue_and_client_on_a_cluster(rc) -> None:
    ran: list[object] = []
    app = App()
    app.register("wat", lambda job: ran.append(job.args["a"]))
    app.register("bad", lambda job: 1 / 0, max_fails=1)
    enqueuer = Enqueuer(NS, rc)
    enqueuer.enqueue("wat", {"a": 1})
    enqueuer.enqueue_many([("wat", {"a": 2}), ("wat", {"a": 3})])
    assert enqueuer.enqueue_unique("wat", {"a": 4}) is not None
    assert enqueuer.enqueue_unique("wat", {"a": 4}) is None
    enqueuer.enqueue_in("wat", -1, {"a": 5})
    enqueuer.enqueue("bad", {})
    assert Requeuer(PoolStore(rc, K)).tick(time.time()) == 1
    worker = Worker(app, rc, NS, idle_waits=(0.01,))
    assert worker.drain() == 6
    assert sorted(ran) == [1, 2, 3, 4, 5]
    client = Client(NS, rc)
    assert [(q.job_name, q.count) for q in client.queues()] == [("bad", 0), ("wat", 0)]
    dead, total = client.dead_jobs()
    assert total == 1 and dead[0].job.err == "division by zero"
    client.retry_dead_job(dead[0].died_at, dead[0].job.id)
    assert Job.from_json(rc.lindex(K.jobs("bad"), 0)).fails == 0
    client.pause("wat")
    enqueuer.enqueue("wat", {"a": 6})
    assert worker.drain() == 1 and 6 not in ran  # only "bad" ran
    client.unpause("wat")
    worker.needs_recovery = True  # the recovery script, too, declares every key it touches
    assert worker.drain() == 1 and 6 in ran
    assert rc.hexists(K.fence(), worker.pool_id)


def test_server_runs_on_a_cluster_and_rides_out_its_outage(rc, cluster_node, tmp_path) -> None:
    from test_server import Server  # the real-process harness of the server tests

    node = rc.get_default_node()
    srv = Server(tmp_path, f"redis://{node.host}:{node.port}/0", redis_options={"cluster": True},
                 namespace=NS)
    try:
        srv.start()
        enqueuer = Enqueuer(NS, rc)
        # the enqueue command reaches the cluster through the same config
        done = srv.cli("enqueue", "record", '{"i": 1}')
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.strip()
        wait_until(lambda: [e for e in read_records(srv.evidence) if e["id"] == job_id], 10)
        # a child SIGKILLed mid-job: the job is reclaimed and runs again to the end
        slow = enqueuer.enqueue("sleep", {"s": 2})
        srv.busy_child().kill()
        wait_until(lambda: [e for e in read_records(srv.evidence)
                            if e["id"] == slow.id and e.get("phase") == "end"], 15)
        assert len([e for e in read_records(srv.evidence) if e["id"] == slow.id]) == 3
        wait_until(lambda: rc.scard(K.worker_pools()) == 2 and rc.get(K.lock("sleep")) == b"0", 10)
        # the whole cluster down for 2 s: nobody dies, and jobs flow once it is back
        children = {c.pid for c in srv.children()}
        cluster_node.kill()
        time.sleep(2)
        cluster_node.start()
        after = wait_until(lambda: _enqueue_when_up(enqueuer, "record"), 15, 0.2, "an enqueue")
        wait_until(lambda: [e for e in read_records(srv.evidence) if e["id"] == after.id], 15)
        assert {c.pid for c in srv.children()} == children and srv.process.poll() is None
        srv.signal(signal.SIGTERM)
        assert srv.wait(20) == 0
        assert rc.scard(K.worker_pools()) == 0  # heartbeats removed on the way out
    finally:
        stop_all([srv])
