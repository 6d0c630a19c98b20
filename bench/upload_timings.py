"""One search by upload at a time against a running `lookalike serve`, and where its time goes.

    python3 bench/upload_timings.py PORT [REQUESTS (default 200)]

Posts the 16 clothing-small test photos bench_server uploads (every len/16-th, sorted) in turn
over one keep-alive connection (multipart, field `image`), skips the first 20, and prints the
medians of the client's wall time and of the response's own `timings` (decode, embed, search,
total ms). Start the server on a kept bench collection first, e.g.
    build/cli/lookalike --collection build/bench/bench-server-work/collection \\
        --model build/fixtures/models/mobilenet_v2.pt serve --port 18090
Used in bench/README.md to split the upload latency that bench_server's target compares with
the model-only figure.
"""
import glob
import http.client
import json
import os
import statistics
import sys
import time

port = int(sys.argv[1])
requests = int(sys.argv[2]) if len(sys.argv) > 2 else 200
shared = os.environ.get("LOOKALIKE_SHARED_DIR",
                        os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
every = sorted(glob.glob(f"{shared}/datasets/clothing-small/test/**/*.jpg", recursive=True))
photos = [open(every[len(every) * i // 16], "rb").read() for i in range(16)]
conn = http.client.HTTPConnection("127.0.0.1", port)
rows = []
for i in range(requests + 20):
    boundary = "----lookalike"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"query.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    body += photos[i % 16] + f"\r\n--{boundary}--\r\n".encode()
    t0 = time.perf_counter()
    conn.request("POST", "/v1/search", body,
                 {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    reply = conn.getresponse()
    timings = json.loads(reply.read())["timings"]
    wall = (time.perf_counter() - t0) * 1000
    if i >= 20:
        rows.append((wall, timings["decode_ms"], timings["embed_ms"], timings["search_ms"],
                     timings["total_ms"]))
names = ["client wall", "decode + preprocess", "embed", "search", "server total"]
print(", ".join(f"{n} {statistics.median(r[k] for r in rows):.2f} ms"
                for k, n in enumerate(names)))
