#!/usr/bin/env python3
"""Opens N keep-alive connections to 127.0.0.1:PORT, sends one `GET /` on each and reads the
answer, then holds them all idle until SIGTERM. Writes how many are open to --ready once done,
and on SIGTERM prints how many the proxy had not closed.
Stdlib only."""

import argparse
import asyncio
import signal
import sys

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def one(port, held, sem):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            writer.write(REQUEST)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await asyncio.wait_for(reader.readexactly(length), 10)
            held.append((reader, writer))
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            print(f"connection failed: {e!r}", file=sys.stderr)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, required=True)
    ap.add_argument("--ready", required=True)
    args = ap.parse_args()
    held = []
    sem = asyncio.Semaphore(256)
    await asyncio.gather(*(one(args.port, held, sem) for _ in range(args.conns)))
    with open(args.ready, "w") as f:
        f.write(f"{len(held)}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # How many the proxy still held open when told to stop: one it closed has seen EOF.
    await asyncio.sleep(0)
    still = sum(1 for r, _ in held if not r.at_eof())
    print(f"still open at the end: {still}", flush=True)
    for _, w in held:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
