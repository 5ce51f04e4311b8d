"""The CLI's commands that run or install Cube itself rather than work on it: the join token, joining, the worker,
the manager, `cube dev`, systemd install and removal, doctor, version. A mixin of `main.Commands` (each method is a
command; its docstring is its --help)."""

from __future__ import annotations

import os

from cube import __version__
from cube.cli.common import as_list, as_pairs, manager_client, manager_url, positive_seconds
from cube.core.errors import CubeError


class ClusterCommands:
    def token(self, data: str | None = None, rotate: bool = False, manager: str | None = None):
        """cube token [--data DIR] [--rotate]

        Prints the join token of the manager on this machine (or of `cube dev`): the cluster CA's fingerprint and
        the secret, which workers join with and the CLI uses (CUBE_TOKEN). --rotate makes a new one on the running
        manager: joined nodes keep working, new joins and CLI users need the new token.

        Flags:
          --data DIR             the manager's data directory (default: the manager's, then cube dev's)
          --rotate               make a new join token on the running manager, and print it
          --manager URL          the manager to rotate the token of (with --rotate)"""
        from cube.cluster.config import TOKEN_FILE, data_dir, local_join_token

        if rotate:
            print(manager_client(manager, None).post("/token/rotate")["token"])
            return None
        places = (
            [os.path.join(data_dir("manager", data), TOKEN_FILE)]
            if data
            else [os.path.join(data_dir(role), TOKEN_FILE) for role in ("manager", "dev")]
        )
        for path in places:
            token = local_join_token(os.path.dirname(path))
            if token:
                print(token)
                return None
        raise CubeError(
            f"no cluster token at {' or '.join(places)}: run this on the manager's machine (as the user "
            f"that runs it), or pass --data DIR"
        )

    def join(self, manager: str | None = None, token: str | None = None, data: str | None = None):
        """cube join --manager URL --token JOIN_TOKEN [--data DIR]

        Joins this node to a cluster: checks the manager against the token's CA fingerprint, gets a certificate for
        a key made here, and keeps both in the worker's data directory. `cube worker` does this by itself at first
        start; after it, the worker needs no token.

        Flags:
          --manager URL          the manager to join (default: CUBE_MANAGER, the manager on this machine, then mDNS)
          --token JOIN_TOKEN     the join token: `cube token` on the manager prints it (default: CUBE_TOKEN)
          --data DIR             the worker's data directory (default /var/lib/cube/worker as root)"""
        from cube.cluster.config import data_dir, find_token
        from cube.cluster.trust import parse_token
        from cube.cluster.worker_service import join, worker_id

        given = parse_token(find_token(token))
        if given is None:
            raise CubeError("join needs the join token: pass --token or set CUBE_TOKEN (`cube token` on the manager)")
        url = manager_url(manager)
        directory = data_dir("worker", data)
        node = worker_id(directory)
        join(url, given, directory, node)
        print(f"joined the cluster of {url} as node {node}; start the worker: systemctl start cube-worker")

    def worker(
        self,
        port: int = 5556,
        data: str | None = None,
        name: str | None = None,
        token: str | None = None,
        token_file: str | None = None,
        cpus: float | None = None,
        memory=None,
        disk=None,
        label=(),
        host: str = "0.0.0.0",
        manager: str | None = None,
        mdns: bool = True,
        insecure: bool = False,
        reconcile_interval: float = 5.0,
        stop_timeout: float = 10.0,
        threads: int = 4,
        disconnect_timeout: float = 30.0,
        device=(),
        pull_timeout: float = 300.0,
        pull_stall: float = 60.0,
        metrics_open: bool = False,
        verbose: bool = False,
    ):
        """cube worker [FLAGS]

        Runs a worker: runs the tasks the manager assigns to this node as Docker containers. Without --manager it
        announces itself on the LAN (mDNS) and registers with the manager it finds. At first start it joins the
        cluster with the join token (`cube token` on the manager) and keeps a certificate; after that the token is
        not needed. A worker that hears from no manager for --disconnect-timeout seconds stops its tasks whose
        on_disconnect is stop (0: never).

        Flags:
          --port N                 the worker API's port (default 5556)
          --host ADDRESS           the address it listens on (default 0.0.0.0: all)
          --data DIR               where it keeps its tasks and certificate (default /var/lib/cube/worker as root)
          --name NAME              the node's name (default: the host name)
          --token T                the join token, needed at first start (default: CUBE_TOKEN)
          --token-file F           a file holding the join token
          --cpus N                 CPUs offered to tasks (default: all)
          --memory SIZE            memory offered to tasks, e.g. 4g (default: all)
          --disk SIZE              disk offered to tasks, e.g. 20g (default: the free space)
          --label K=V              a node label that --constraint can match (repeatable)
          --manager URL            the manager to register with (default: found by mDNS)
          --no-mdns                do not announce this worker on the LAN
          --insecure               plain HTTP, with a manager that runs --insecure
          --reconcile-interval S   seconds between full reconciliations with Docker (default 5)
          --stop-timeout S         seconds a container gets to exit when stopped (default 10)
          --threads N              threads that start and stop containers (default 4)
          --disconnect-timeout S   seconds without a manager before tasks with on_disconnect stop are stopped
                                   (default 30; 0: never)
          --device PATH            a device this node offers to tasks, besides the usual places it finds by
                                   itself (/dev/ttyUSB*, /dev/ttyACM*, /dev/serial/by-id/*, /dev/video*, ...;
                                   repeatable)
          --pull-timeout S         seconds an image pull may take before its task fails (default 300)
          --pull-stall S           seconds a pull may go without progress before it fails sooner (default 60)
          --metrics-open           GET /metrics (Prometheus) answers without the token
          --verbose                log more"""
        from cube.cluster.service import setup_logging
        from cube.cluster.worker_service import run_worker
        from cube.core.model import parse_size

        setup_logging(verbose)
        run_worker(
            name=str(name) if name else None,
            port=int(port),
            host=host,
            data=data,
            token=token,
            token_file=token_file,
            cpus=float(cpus) if cpus else None,
            memory=parse_size(memory, "--memory") if memory else None,
            disk=parse_size(disk, "--disk") if disk else None,
            labels=as_pairs(label, "--label"),
            insecure=bool(insecure),
            manager=manager,
            mdns=mdns,
            reconcile_interval=float(reconcile_interval),
            stop_timeout=float(stop_timeout),
            threads=int(threads),
            disconnect_timeout=float(disconnect_timeout),
            devices=as_list(device),
            pull_timeout=positive_seconds(pull_timeout, "--pull-timeout"),
            pull_stall=positive_seconds(pull_stall, "--pull-stall"),
            metrics_open=bool(metrics_open),
        )

    def manager(
        self,
        port: int = 5555,
        data: str | None = None,
        token: str | None = None,
        scheduler: str = "epvm",
        workers=(),
        host: str = "0.0.0.0",
        node_timeout: float = 5.0,
        mdns: bool = True,
        insecure: bool = False,
        verbose: bool = False,
        cluster_cidr: str = "10.210.0.0/16",
        metrics_open: bool = False,
        etcd: str | None = None,
    ):
        """cube manager [FLAGS]

        Runs the manager: accepts work, schedules it onto workers, keeps it running. Creates the cluster CA and
        token at first start (`cube token` prints the join token). All traffic is TLS; --insecure: plain HTTP.

        Flags:
          --port N               the manager API's port (default 5555)
          --host ADDRESS         the address it listens on (default 0.0.0.0: all)
          --data DIR             where it keeps tasks, events, the CA and the token (default /var/lib/cube/manager
                                 as root)
          --token T              the cluster secret to use (kept for next time; default: the kept one, or a new one)
          --scheduler NAME       epvm (default), roundrobin, binpack or spread
          --workers HOST:PORT,...  workers to admit without mDNS (repeatable)
          --node-timeout S       seconds of silence before a node is down and its tasks move (default 5)
          --cluster-cidr RANGE   the containers' addresses: a /24 of it per node, routed between nodes (default
                                 10.210.0.0/16; off: containers on each engine's own bridge only)
          --no-mdns              do not announce the manager on the LAN, nor look for workers there
          --etcd URL,...         keep the state in etcd 3.4+ (http://a:2379,http://b:2379,...) instead of --data's
                                 store: several managers share it and the one elected serves (README, "When you
                                 outgrow one manager")
          --insecure             plain HTTP instead of TLS
          --metrics-open         GET /metrics (Prometheus) answers without the token
          --verbose              log more"""
        from cube.cluster.manager_service import run_manager
        from cube.cluster.service import setup_logging
        from cube.manager.network import parse_cidr

        parse_cidr(cluster_cidr)  # a mistake is said before anything starts
        if etcd is not None:
            from cube.store.etcd_gateway import parse_endpoints

            etcd = ",".join(parse_endpoints(str(etcd)))
        setup_logging(verbose)
        run_manager(
            port=int(port),
            host=host,
            data=data,
            token=token,
            strategy=scheduler,
            workers=as_list(workers),
            node_timeout=float(node_timeout),
            mdns=mdns,
            insecure=bool(insecure),
            cluster_cidr=cluster_cidr,
            metrics_open=bool(metrics_open),
            etcd=etcd,
        )

    def dev(
        self,
        port: int = 5555,
        data: str | None = None,
        workers: int = 1,
        scheduler: str = "epvm",
        cpus: float | None = None,
        memory=None,
        stop_timeout: float = 10.0,
        insecure: bool = False,
        metrics_open: bool = False,
        verbose: bool = False,
    ):
        """cube dev [FLAGS]

        A whole cluster in one process: a manager and N local workers on this machine's Docker engine. Prints the
        manager URL and token; `cube run` in another terminal finds it by itself.

        Flags:
          --port N               the manager API's port (default 5555)
          --data DIR             where it keeps its state (default ~/.local/share/cube/dev)
          --workers N            how many local workers (default 1)
          --scheduler NAME       epvm (default), roundrobin, binpack or spread
          --cpus N               CPUs each worker offers (default: all)
          --memory SIZE          memory each worker offers, e.g. 4g (default: all)
          --stop-timeout S       seconds a container gets to exit when stopped (default 10)
          --insecure             plain HTTP instead of TLS
          --metrics-open         GET /metrics (Prometheus) answers without the token
          --verbose              log more"""
        from cube.cluster.manager_service import run_dev
        from cube.cluster.service import setup_logging
        from cube.core.model import parse_size

        setup_logging(verbose)
        run_dev(
            port=int(port),
            data=data,
            workers=int(workers),
            strategy=scheduler,
            cpus=float(cpus) if cpus else None,
            memory=parse_size(memory, "--memory") if memory else None,
            stop_timeout=float(stop_timeout),
            insecure=bool(insecure),
            metrics_open=bool(metrics_open),
        )

    def install(
        self,
        role: str,
        token: str | None = None,
        manager: str | None = None,
        label=(),
        port: int | None = None,
        name: str | None = None,
        workers=(),
        scheduler: str | None = None,
        mdns: bool = True,
        pyz: str | None = None,
        root: str | None = None,
    ):
        """cube install worker|manager [FLAGS]

        Installs this cube.pyz as a systemd service (run it with sudo): copies it to /usr/local/bin/cube, writes
        /etc/systemd/system/cube-ROLE.service and /etc/cube/cube.env (mode 0600: the token and the service's flags),
        then enables and starts the service. Flags given replace the service's previous ones; without flags they are
        kept, so running a newer pyz's install again upgrades in place.
        Example: sudo ./cube.pyz install worker --manager http://pi0:5555 --token T

        Flags:
          --token T              the cluster token (a worker's; a manager's own, to choose it)
          --manager URL          the manager a worker registers with (default: found by mDNS)
          --label K=V            a worker's node label (repeatable)
          --port N               the service's port
          --name NAME            a worker's node name
          --workers HOST:PORT,...  a manager's static workers (repeatable)
          --scheduler NAME       a manager's scheduler: epvm, roundrobin, binpack or spread
          --no-mdns              no mDNS announcing or browsing
          --pyz FILE             the file to install (default: this one)
          --root DIR             install under DIR instead of / (for tests)"""
        from cube.ops import install

        args = install.role_args(
            str(role),
            port=port,
            manager=manager,
            labels=[label] if isinstance(label, str) else list(label),
            name=name,
            workers=as_list(workers),
            scheduler=scheduler,
            mdns=mdns,
        )
        host = install.Host(str(root)) if root else install.Host()
        for line in install.install(
            str(role), pyz=pyz, token=None if token is None else str(token), args=args, host=host
        ):
            print(line)

    def uninstall(self, role: str, purge: bool = False, root: str | None = None):
        """cube uninstall worker|manager [--purge]

        Stops and removes the systemd service. Keeps /etc/cube/cube.env and the data in /var/lib/cube unless --purge;
        the last service to go takes /usr/local/bin/cube with it.
        Example: sudo cube uninstall worker

        Flags:
          --purge                also remove the data and /etc/cube
          --root DIR             uninstall under DIR instead of / (for tests)"""
        from cube.ops import install

        host = install.Host(str(root)) if root else install.Host()
        for line in install.uninstall(str(role), purge=bool(purge), host=host):
            print(line)

    def doctor(self, role: str = "worker", json: bool = False):
        """cube doctor [--role worker|manager] [--json]

        Checks that this machine can run a Cube worker (or manager): Docker engine, memory cgroup, multicast, disk,
        clock, Python, architecture. Prints one line per check and what to fix; exits 1 when a check fails.

        Flags:
          --role ROLE            worker (default) or manager"""
        from cube.ops import doctor

        checks = doctor.run(str(role))
        print(doctor.render(checks, as_json=bool(json)))
        if doctor.failed(checks):
            raise SystemExit(1)

    def upgrade(
        self,
        pyz=(),
        dry_run: bool = False,
        status: bool = False,
        wait: bool = True,
        manager: str | None = None,
        token: str | None = None,
        json: bool = False,
    ):
        """cube upgrade [--pyz FILE ...] [--dry-run] [--status] [--no-wait]

        Upgrades the cluster to a new cube.pyz: uploads it to the manager, which replaces the workers' pyz one at a
        time (each restarts on it and adopts its running containers, which keep running), then its own. A pyz more
        than one API level from the manager's is refused. Without --pyz, this cube.pyz is the new one.
        Example: cube upgrade --pyz cube-0.2.0-x86_64.pyz --pyz cube-0.2.0-aarch64.pyz

        Flags:
          --pyz FILE             the new pyz, one per architecture the cluster runs (repeatable; default: this one)
          --dry-run              check the files against the cluster and say what would be upgraded; send nothing
          --status               show the last upgrade's progress
          --no-wait              start the upgrade and return (cube upgrade --status follows it)"""
        import json as json_module

        from cube.cli import upgrade

        client = manager_client(manager, token)
        if status:
            now = client.get("/upgrade")
            print(json_module.dumps(now, indent=2) if json else upgrade.render(now))
            return None
        files = upgrade.read_files(as_list(pyz))
        started = upgrade.start(client, files, bool(dry_run), print)
        if started is None:
            return None
        final = upgrade.follow(client, started, print) if wait else started
        print(json_module.dumps(final, indent=2) if json else upgrade.render(final))
        if final.get("status") == "failed":
            raise SystemExit(1)

    def version(self):
        """cube version

        Prints the version."""
        print(f"cube {__version__}")
