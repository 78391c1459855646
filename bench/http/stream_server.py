"""The package's side of the streamed-reply benchmark: every request gets a chunked reply of
TOTAL bytes in CHUNK-byte chunks, the next chunk queued from the last one's ``on_sent`` (as
c_stream.c does from evhttp_send_reply_chunk_with_cb's callback); with ``--in-flight N``, N
chunks are kept queued instead of one.

    python bench/http/stream_server.py PORT TOTAL CHUNK [--in-flight N]
"""

from __future__ import annotations

import argparse
import signal

from bitcoin_support import EVLOOP_NO_EXIT_ON_EMPTY, EvHttpRequest, obtain_event_base, obtain_evhttp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("total", type=int)
    ap.add_argument("chunk", type=int)
    ap.add_argument("--in-flight", type=int, default=1)
    args = ap.parse_args()
    block = memoryview(b"p" * args.chunk)
    base = obtain_event_base()
    http = obtain_evhttp(base)
    http.bind("127.0.0.1", args.port)

    def on_request(req: EvHttpRequest, _arg: object) -> None:
        left = [args.total]

        def more() -> None:
            if left[0] > 0:
                n = min(left[0], args.chunk)
                left[0] -= n
                req.send_reply_chunk(block[:n], on_sent=more)
            elif left[0] == 0:
                left[0] = -1
                req.send_reply_end()

        req.output_headers.set("Content-Type", "application/octet-stream")
        req.send_reply_start(200)
        for _ in range(args.in_flight):
            more()

    http.set_gencb(on_request)
    signal.signal(signal.SIGTERM, lambda *_: base.loopbreak())
    signal.signal(signal.SIGINT, lambda *_: base.loopbreak())
    print(f"listening on http://127.0.0.1:{args.port}/", flush=True)
    base.loop(EVLOOP_NO_EXIT_ON_EMPTY)
    http.close()
    base.close()


if __name__ == "__main__":
    main()
