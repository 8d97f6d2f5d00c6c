"""The peers a bench runs relay-edge beside: nginx and HAProxy configs with
keep-alive both ways, session stickiness on one header, and streaming
answers passed through unbuffered."""
import os


def nginx_conf(tmp, name, port, relays, threads=1, header="x-session-id", keepalive=64, access_log=None):
    log = f"access_log {access_log} combined;" if access_log else "access_log off;"
    servers = "\n".join(f"        server 127.0.0.1:{p};" for _, p in relays)
    var = "$http_" + header.replace("-", "_")
    path = os.path.join(tmp, f"{name}.conf")
    open(path, "w").write(f"""worker_processes {threads};
pid {name}.pid;
error_log {name}.error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    {log}
    keepalive_requests 1000000;
    keepalive_timeout 600s;
    client_max_body_size 8m;
    client_body_buffer_size 2m;     # 1 MiB bodies stay in memory
    client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
    upstream relays {{
        hash {var} consistent;
{servers}
        keepalive {keepalive};          # idle upstream connections kept, per worker
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://relays;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;          # stream SSE event by event
            proxy_read_timeout 600s;
        }}
    }}
}}
""")
    return path


def haproxy_conf(tmp, port, relays, threads=1, header="x-session-id"):
    servers = "\n".join(f"    server {n} 127.0.0.1:{p}" for n, p in relays)
    path = os.path.join(tmp, "haproxy.cfg")
    open(path, "w").write(f"""global
    nbthread {threads}
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
frontend fe
    bind 127.0.0.1:{port}
    default_backend relays
backend relays
    balance leastconn
    http-reuse always
    stick-table type string len 64 size 100k expire 1h
    stick on req.hdr({header})
{servers}
""")
    return path
