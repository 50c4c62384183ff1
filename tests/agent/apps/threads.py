"""Four threads count in their own variables; the main thread prints their counts. After a
restore every thread must still run (each count keeps growing) from where it stopped."""

import threading
import time

counters = [0, 0, 0, 0]


def work(index: int) -> None:
    while True:
        counters[index] += 1
        time.sleep(0.01 * (index + 1))


for i in range(len(counters)):
    threading.Thread(target=work, args=(i,), daemon=True).start()

while True:
    print("threads " + " ".join(map(str, counters)), flush=True)
    time.sleep(0.1)
