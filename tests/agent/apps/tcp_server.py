"""A TCP server on 127.0.0.1:7000 whose answers carry an in-memory counter: a restored server
answers with the next number, a restarted one would start again at 1."""

import selectors
import socket

served = 0
listener = socket.create_server(("127.0.0.1", 7000), reuse_port=False)
listener.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(listener, selectors.EVENT_READ)
print("listening", flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is listener:
            conn, _ = listener.accept()
            conn.setblocking(False)
            sel.register(conn, selectors.EVENT_READ)
            continue
        conn = key.fileobj
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if not data:
            sel.unregister(conn)
            conn.close()
            print("connection closed", flush=True)
            continue
        for _line in data.splitlines():
            served += 1
            conn.sendall(f"served {served}\n".encode())
        print(f"served {served}", flush=True)
