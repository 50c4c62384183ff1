"""A server and its own client (a forked child) talking over one established TCP connection:
the client sends a number, the server answers number+1, forever. `pingpong N port P` lines show
the conversation and the client's local port: the same port after a restore is the same
connection. The client connects to the address in argv[1] (the pod's IP), the server listens
on every address. When the connection breaks the client says so and connects again."""

import os
import socket
import sys
import time

HOST = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("", 7000))
server.listen()

if os.fork() == 0:
    server.close()
    n = 0
    while True:
        try:
            conn = socket.create_connection((HOST, 7000))
        except OSError:
            time.sleep(0.1)
            continue
        port = conn.getsockname()[1]
        try:
            while True:
                conn.sendall(f"{n}\n".encode())
                reply = conn.recv(64)
                if not reply:
                    raise ConnectionError("closed")
                n = int(reply)
                print(f"pingpong {n} port {port}", flush=True)
                time.sleep(0.05)
        except OSError as exc:
            print(f"connection lost ({exc.__class__.__name__})", flush=True)
            conn.close()

while True:
    conn, _ = server.accept()
    with conn:
        try:
            while data := conn.recv(64):
                conn.sendall(f"{int(data) + 1}\n".encode())
        except OSError:
            pass
