"""Run through `sandbox.exec`: send `count` requests on one connection and print the answers;
with `hold`, keep the connection open afterwards (a client connected at dump time)."""

import socket
import sys
import time

count = int(sys.argv[1])
hold = len(sys.argv) > 2 and sys.argv[2] == "hold"
for _ in range(100):
    try:
        conn = socket.create_connection(("127.0.0.1", 7000), timeout=5)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("server not reachable")
reader = conn.makefile("r")
for _ in range(count):
    conn.sendall(b"ping\n")
    print(reader.readline().strip(), flush=True)
if hold:
    print("holding", flush=True)
    try:
        while conn.recv(4096):
            pass
    except OSError:
        pass
    print("closed by server", flush=True)
