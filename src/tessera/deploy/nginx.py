"""The HTTP cache tier: an nginx.conf that puts nginx in front of one or more ``tessera serve`` nodes.

nginx keeps rendered IIIF responses (``/iiif/``, ``/thumbs/``) in its own disk cache (``proxy_cache``)
and serves hits at static-file speed; everything else is proxied uncached. With several nodes, every
request for one object goes to the same node (``hash … consistent`` on the object's virtual path), so
each source is cached once in the whole cluster and a node that leaves moves only its own share.

Freshness is nginx's, not the browsers': a cached response is fresh for ``fresh`` seconds, whatever
``Cache-Control`` Tessera sends to browsers; then nginx revalidates it with ``If-None-Match`` /
``If-Modified-Since`` and Tessera answers 304 while the source's ETag is unchanged. nginx open source
cannot purge an entry (and deleting its files works only on the front's own machine), so the front's
cache is kept right by bounded staleness, not by purging: after an overwrite or a delete, the front
serves the old rendering for at most ``fresh`` seconds (nginx counts whole seconds, so up to one
more), then asks the object's home node, whose metadata the cluster has invalidated. A cluster front
therefore gets a short ``fresh`` (``tessera front-config`` defaults to :data:`CLUSTER_FRESH`).

With several nodes the front fails over: a node that refuses a connection, resets it or does not
answer in time is skipped (``proxy_next_upstream``; a POST or PATCH that reached it is never sent
again) and left out for ``fail_timeout`` seconds, the failure state shared by
nginx's workers (``zone``). ``hash … consistent`` then sends its objects to the next node on the ring
(their "next home", :meth:`tessera.deploy.ring.Ring.node` with ``down``) and nothing else moves; after
``fail_timeout`` nginx tries it again and, once it answers, its objects go back to it. Hosted uploads
(``/api/v1/images`` without a link) name no object yet: any node can take one (the link map is shared
in PostgreSQL), so they go to the least busy node instead of one constant home.

:func:`render_nginx_conf` is pure: parameters in, the text of a complete nginx.conf out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from tessera.config import parse_size

DEFAULT_LISTEN = "127.0.0.1:8081"

#: ``host:port``, ``[v6]:port``, ``*:port`` or a bare port (listen only).
_ADDRESS = re.compile(r"^(?:(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9*][A-Za-z0-9.\-]*):)?(?P<port>\d{1,5})$")

#: The object a request is about, so that all of one image's requests reach one node. nginx's ``$uri``
#: is percent-decoded, so the IIIF identifier ``images%2Fa.tif`` and ``/api/v1/files/images/a.tif`` both
#: give ``images/a.tif``; the lazy match leaves off the IIIF tail (four segments, or ``info.json``).
#: A hosted image is its link: ``/i/{link}…``, ``/api/v1/images/{link}`` and every file under
#: ``{hosting mount}/{link}/`` (original, derivatives, IIIF of them) share one home. Requests that
#: name no object in their URL (tus uploads, jobs, ingest, retrieve, listings, cache operations, stats)
#: all get one constant key, ``CONTROL_KEY``: one node holds the uploads' and the jobs' state.
_IMAGE_MAP = r"""
    map $uri $tessera_image {{
        "~^/iiif/[23]/{hosted}/([^/]+)/"                                    link:$1;
        "~^/thumbs/{hosted}/([^/]+)/"                                       link:$1;
        "~^/api/v1/files/{hosted}/([^/]+)"                                  link:$1;
        "~^/api/v1/cached/{hosted}/([^/]+)"                                 link:$1;
        "~^/i/([^/]+)"                                                      link:$1;
        "~^/api/v1/images/([^/]+)"                                          link:$1;
        "~^/iiif/[23]/(.+?)(?:/info\.json|/[^/]+/[^/]+/[^/]+/[^/]+)?/?$"  $1;
        "~^/thumbs/(.+?)(?:/info\.json|/[^/]+/[^/]+/[^/]+/[^/]+)?/?$"     $1;
        "~^/api/v1/files/(.+)$"                                             $1;
        "~^/api/v1/cached/(.+)$"                                            $1;
        default                                                             {control};
    }}

    # info.json is JSON-LD or plain JSON by Accept (Tessera sends no Vary): two cache entries.
    map $http_accept $tessera_accept {{
        "~application/ld\+json"  ld;
        default                  "";
    }}
"""

#: The hash key of every request that names no object in its URL (see ``_IMAGE_MAP``).
CONTROL_KEY = "/control"

#: The front's freshness by default in a cluster (seconds): the longest it serves a rendering after
#: its source changed, beyond the cluster's own invalidation delay (nginx adds up to one second).
CLUSTER_FRESH = 1.0

#: How long nginx waits for a node to accept a connection before it tries the next one (and counts
#: a failure): far above a LAN's connect time, short enough that a machine gone silent costs a
#: request one second, not nginx's default of 60.
CONNECT_TIMEOUT = "1s"


def object_key(path: str, hosting_mount: str = "hosted") -> str:
    """The hash key the front gives the object at virtual path ``path`` (``/images/a.tif``): what
    ``_IMAGE_MAP`` makes of ``/api/v1/files{path}``."""
    key = path.lstrip("/")
    mount, _, rest = key.partition("/")
    if mount == hosting_mount and rest:
        return "link:" + rest.split("/", 1)[0]
    return key


def parse_node(text: str) -> str:
    """A node as nginx's ``server`` takes it: ``HOST:PORT``, or ``unix:/absolute/path`` (a socket)."""
    if text.startswith("unix:"):
        path = _path(text.removeprefix("unix:"), "a node's socket")
        return f"unix:{path}"
    host, port = parse_address(text)
    return f"{host}:{port}"


def parse_address(text: str, *, listen: bool = False) -> tuple[str | None, int]:
    """``"127.0.0.1:8080"`` -> ``("127.0.0.1", 8080)``; ``listen`` also allows a bare port or ``*:port``."""
    match = _ADDRESS.match(text.strip())
    port = int(match.group("port")) if match else 0
    host = match.group("host") if match else None
    if not match or not 0 < port < 65536 or (host is None and not listen) or (host == "*" and not listen):
        shape = "HOST:PORT or PORT" if listen else "HOST:PORT"
        raise ValueError(f"not an address: {text!r} (expected {shape}, e.g. 127.0.0.1:8080)")
    if host is not None and "*" in host and host != "*":
        raise ValueError(f"not an address: {text!r}")
    return host, port


def nginx_size(value: str | int) -> str:
    """A size for nginx (``k``/``m``/``g`` are powers of 1024 there too, as in :func:`parse_size`)."""
    size = parse_size(value)
    for unit, factor in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _seconds(value: float, name: str) -> int:
    if not value > 0:
        raise ValueError(f"{name} must be positive (nginx counts in whole seconds)")
    return max(1, math.ceil(value))


def _path(value: Path | str, name: str) -> Path:
    path = Path(value)
    if not path.is_absolute():
        raise ValueError(f"{name} must be an absolute path, not {str(value)!r}")
    if any(c in str(path) for c in " ;{}\"'\\$#") or any(ord(c) < 32 for c in str(path)):
        raise ValueError(f"{name} {str(path)!r} has characters nginx.conf would need quoted; choose another")
    return path


def render_nginx_conf(
    *,
    nodes: Sequence[str],
    cache_dir: Path | str,
    prefix: Path | str,
    fresh: float,
    listen: str = DEFAULT_LISTEN,
    cache_size: str | int = "1GB",
    keys_zone: str | int = "16MB",
    inactive: float = 86400.0,
    worker_processes: int | str = "auto",
    worker_connections: int = 1024,
    access_log: bool = True,
    user: str | None = None,
    background_update: bool = False,
    max_body: str | int = "1MB",
    conf_file: Path | str | None = None,
    http_cache: bool = True,
    hosting_mount: str = "hosted",
    fail_timeout: float = 5.0,
) -> str:
    """The text of an nginx.conf for ``nginx -p PREFIX -c FILE`` in front of the Tessera ``nodes``.

    ``nodes`` are ``HOST:PORT`` strings; ``cache_dir`` holds nginx's cache (at most ``cache_size``, keys
    in a ``keys_zone`` of shared memory: 1MB holds about 8,000); ``prefix`` its pid file, logs and temp
    files. Rendered responses are fresh for ``fresh`` seconds, then revalidated; entries unused for
    ``inactive`` seconds are dropped. ``user`` sets the workers' user when nginx starts as root.
    By default the request that finds an entry expired waits for the revalidation (``REVALIDATED``;
    a 304 from Tessera costs well under a millisecond) while concurrent ones get the stale copy.
    ``background_update`` answers that request with the stale copy too (``STALE``), but nginx then
    holds the client's keep-alive connection until the background revalidation ends, so the client's
    next request on it waits anyway.
    ``conf_file`` only names the file in the comment that says how to start nginx. Raises ``ValueError``
    on a bad parameter.

    ``nodes`` may also be ``unix:/path`` sockets (the shards of ``tessera serve --workers``). With
    ``http_cache`` off, rendered responses are proxied, never kept. ``hosting_mount`` names the mount
    whose ``{link}/`` folders belong to hosted images (they share the link's home). With several nodes,
    ``/shards/K/…`` reaches node K (from 0, in the order given) whatever the hash says (its
    ``/metrics``, its stats), ``/healthz`` answers while any node does, hosted uploads go to the least
    busy node, and a failed node is left out for ``fail_timeout`` seconds (see the module's text).
    """
    if not nodes:
        raise ValueError("at least one Tessera node (HOST:PORT) is needed")
    upstreams = [parse_node(node) for node in nodes]
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", hosting_mount):
        raise ValueError(f"the hosting mount name {hosting_mount!r} cannot be matched in nginx.conf")
    if len(set(upstreams)) != len(upstreams):
        raise ValueError(f"a node is listed twice: {', '.join(upstreams)}")
    listen_host, listen_port = parse_address(listen, listen=True)
    listen_at = f"{listen_host}:{listen_port}" if listen_host else str(listen_port)
    cache = _path(cache_dir, "the cache directory")
    run = _path(prefix, "the prefix directory")
    max_size = nginx_size(cache_size)
    if parse_size(cache_size) < parse_size("1MB"):
        raise ValueError("the cache size must be at least 1MB")
    zone = nginx_size(keys_zone)
    if parse_size(keys_zone) < parse_size("64KB"):
        raise ValueError("the keys zone must be at least 64KB")
    fresh_s = _seconds(fresh, "the freshness")
    fail_s = _seconds(fail_timeout, "fail_timeout")
    inactive_s = max(_seconds(inactive, "inactive"), fresh_s)
    if not (worker_processes == "auto" or (isinstance(worker_processes, int) and worker_processes > 0)):
        raise ValueError(f"worker_processes must be 'auto' or a positive number, not {worker_processes!r}")
    if user is not None and not re.fullmatch(
        r"[A-Za-z0-9_][A-Za-z0-9_.\-]*( [A-Za-z0-9_][A-Za-z0-9_.\-]*)?", user
    ):
        raise ValueError(f"not a user (and group) name: {user!r}")

    several = len(upstreams) > 1
    balance = "        hash $tessera_image consistent;\n        zone tessera_nodes 256k;\n" if several else ""
    failing = f" max_fails=1 fail_timeout={fail_s}s" if several else ""
    servers = "".join(f"        server {u}{failing};\n" for u in upstreams)
    log = f"access_log {run}/access.log tessera buffer=64k flush=1s;" if access_log else "access_log off;"
    if http_cache:
        # A 404 is kept 10 s, or less when renderings are (an object created is seen as soon).
        missing = min(10, fresh_s)
        cached = _CACHED.format(
            fresh=fresh_s,
            missing=missing,
            background="on" if background_update else "off",
            open_files=OPEN_FILES,
        )
    else:
        cached = "            proxy_pass http://tessera;\n"
    direct_upstreams, direct_locations = (
        _direct(upstreams, failing, nginx_size(max_body)) if several else ("", "")
    )
    return _TEMPLATE.format(
        user=f"user {user};\n" if user else "",
        workers=worker_processes,
        worker_connections=worker_connections,
        nofile=2 * worker_connections + OPEN_FILES + 64,
        run=run,
        cache=cache,
        zone=zone,
        max_size=max_size,
        inactive=inactive_s,
        image_map=_IMAGE_MAP.format(hosted=re.escape(hosting_mount), control=CONTROL_KEY),
        direct_upstreams=direct_upstreams,
        direct_locations=direct_locations,
        access_log=log,
        balance=balance,
        servers=servers,
        listen=listen_at,
        cached=cached,
        failover=_FAILOVER.format(tries=len(upstreams), connect=CONNECT_TIMEOUT) if several else "",
        max_body=nginx_size(max_body),
        nodes=", ".join(upstreams),
        fresh=fresh_s,
        conf_file=conf_file or "THIS_FILE",
    )


def _direct(upstreams: list[str], failing: str, max_body: str) -> tuple[str, str]:
    """One upstream per node, ``/shards/K/`` to reach it; ``/healthz`` and hosted uploads from any
    (the least busy) node."""
    pool = "        keepalive 8;\n        keepalive_timeout 4s;\n"
    blocks = [
        f"    upstream tessera_{k} {{\n        server {u};\n{pool}    }}\n" for k, u in enumerate(upstreams)
    ]
    anyone = "".join(f"        server {u}{failing};\n" for u in upstreams)
    spread = "        least_conn;\n        zone tessera_any 64k;\n"
    blocks.append(f"    upstream tessera_any {{\n{spread}{anyone}{pool}    }}\n")
    locations = [
        f"        location /shards/{k}/ {{\n            proxy_pass http://tessera_{k}/;\n"
        "            proxy_buffering off;\n        }\n\n"
        for k in range(len(upstreams))
    ]
    locations.append(
        "        # The front is up while any node is.\n"
        "        location = /healthz {\n            proxy_pass http://tessera_any;\n        }\n\n"
        "        # A new hosted image (and the list of them): any node, the least busy; the link map is\n"
        "        # shared (PostgreSQL), and the new link's views then go to the link's home.\n"
        "        location = /api/v1/images {\n            proxy_pass http://tessera_any;\n"
        f"            client_max_body_size {max_body};\n            proxy_request_buffering off;\n"
        "        }\n\n"
    )
    return "".join(blocks), "".join(locations)


#: Failover between nodes (several nodes only). ``error timeout`` and not ``http_502``/``http_503``/
#: ``http_504``: those come from a node that is up (an origin failed, the node is overloaded, a render
#: took too long), and trying the request on another node would only cache its object twice. A POST
#: or PATCH (uploads, tus) that reached a node is never sent again (no ``non_idempotent``); PUT and
#: DELETE are idempotent, and a PUT whose body has started is not resent (request buffering is off).
_FAILOVER = """\
        proxy_next_upstream error timeout;
        proxy_next_upstream_tries {tries};
        proxy_connect_timeout {connect};
"""


_CACHED = """\
            proxy_pass http://tessera;
            proxy_cache tessera;
            # The host is part of the key: info.json ids, Link headers and redirects name it.
            proxy_cache_key "$request_method$scheme://$http_host$request_uri$tessera_accept";
            # Tessera's Cache-Control (max-age=86400) is for browsers; nginx's freshness is {fresh}s.
            proxy_ignore_headers Cache-Control Expires;
            # A request with a token may be for a mount with public = false: never answered from the
            # cache nor kept in it (without one, such a mount answers 401/403, which are not kept).
            proxy_cache_bypass $http_authorization;
            proxy_no_cache $http_authorization;
            proxy_cache_valid 200 301 302 303 {fresh}s;
            proxy_cache_valid 404 {missing}s;
            proxy_cache_revalidate on;
            proxy_cache_lock on;
            proxy_cache_use_stale error timeout updating http_502 http_503 http_504;
            proxy_cache_background_update {background};
            add_header X-Cache-Status $upstream_cache_status always;
            # Hits keep their cache file open instead of an open(), fstat() and close() each: nginx
            # CPU per hit 30 -> 25-27 µs (bench/front_static.py, "ofc"). A file replaced by a new
            # response has another inode, which the cache node records: nginx opens the new one.
            open_file_cache max={open_files} inactive=60s;
"""

#: Cache files each nginx worker keeps open (the hot entries; fewer than the hot set only churns).
OPEN_FILES = 10000

#: The upstream ``keepalive_timeout`` (4 s) stays below Tessera's own (``server.keepalive_timeout``,
#: 5 s by default), so nginx drops an idle connection before Tessera closes it and never sends a
#: request on a connection being closed.
_TEMPLATE = """\
# nginx in front of Tessera ({nodes}): the HTTP cache tier.
# Generated by `tessera front-config`. Run: nginx -p {run} -c {conf_file}
# Rendered IIIF responses are fresh here for {fresh}s, then revalidated (304 while the source is unchanged):
# nginx cannot purge: after an overwrite or delete, the old rendering goes out until its {fresh}s end
# (bounded staleness; nginx rounds up, so {fresh}s to {fresh}s+1s after the home node has the change).
{user}worker_processes {workers};
# Two descriptors a proxied connection, plus the cache files kept open.
worker_rlimit_nofile {nofile};
pid {run}/nginx.pid;
error_log {run}/error.log warn;

events {{
    worker_connections {worker_connections};
}}

http {{
    sendfile on;
    # Not tcp_nopush: with sendfile of cache files (header, then the body from an offset) it left
    # responses of 40-65 KB waiting for a delayed ACK, 40 ms each time (bench/iiif.py: 1,800 against
    # 16,000 req/s).
    tcp_nopush off;
    tcp_nodelay on;
    # A tile (40-60 KB) in one buffer: with the default 4 KB ones nginx spent 86 µs a proxied tile
    # in reads and writes of pieces, 54 µs with these (bench/iiif.py, workers part).
    proxy_buffer_size 64k;
    proxy_buffers 4 64k;
    proxy_busy_buffers_size 64k;
    keepalive_timeout 65s;
    keepalive_requests 100000;
    server_tokens off;

    client_body_temp_path {run}/client_body_temp;
    proxy_temp_path {run}/proxy_temp;
    fastcgi_temp_path {run}/fastcgi_temp;
    uwsgi_temp_path {run}/uwsgi_temp;
    scgi_temp_path {run}/scgi_temp;

    log_format tessera '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                       '"$http_user_agent" cache=$upstream_cache_status rt=$request_time '
                       'upstream=$upstream_addr urt=$upstream_response_time t=$msec';
    {access_log}

    proxy_cache_path {cache} levels=1:2 keys_zone=tessera:{zone} max_size={max_size}
                     inactive={inactive}s use_temp_path=off;
{image_map}
    upstream tessera {{
{balance}{servers}        keepalive 64;
        keepalive_timeout 4s;
    }}
{direct_upstreams}
    server {{
        listen {listen};

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
{failover}
        location /iiif/ {{
{cached}        }}

        location /thumbs/ {{
{cached}        }}

        # Objects, with Range: streamed through, never spooled to disk.
        location /api/v1/files/ {{
            proxy_pass http://tessera;
            proxy_buffering off;
            proxy_request_buffering off;
            client_max_body_size {max_body};
        }}

{direct_locations}        # Cache operations, stats, metrics, health: not cached.
        location / {{
            proxy_pass http://tessera;
            client_max_body_size {max_body};
            proxy_request_buffering off;
        }}
    }}
}}
"""
