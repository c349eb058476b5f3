#!/usr/bin/env python3
"""I/O drivers of bench/s3.sh that need finer timing than a shell gives.

  s3io.py write FILE BYTES KEY       write BYTES (1 MiB writes), fsync, check on the server
                                     (HEAD KEY) right after fsync returns, then close.
                                     Prints JSON {"fsync_s", "close_s", "durable_at_fsync",
                                     "size_at_fsync", "durable_at_close"}.
  s3io.py small DIR COUNT BYTES KEYPREFIX
                                     create COUNT files of BYTES each (open, write, close);
                                     after each close (outside the timed part) HEAD the key.
                                     Prints JSON {"secs", "durable", "count"}.
  s3io.py head KEY                   print the object's size on the server (-1 if absent)

The server check is an S3 HEAD signed here with SigV4 (stdlib only, no ovfs/OpenDAL code),
from OVFS_TEST_S3_ENDPOINT / _BUCKET / _ACCESS_KEY_ID / _SECRET_ACCESS_KEY.
"""
import datetime
import hashlib
import hmac
import http.client
import json
import os
import sys
import time
import urllib.parse

ENDPOINT = os.environ.get("OVFS_TEST_S3_ENDPOINT", "http://127.0.0.1:8333")
BUCKET = os.environ.get("OVFS_TEST_S3_BUCKET", "test")
AK = os.environ.get("OVFS_TEST_S3_ACCESS_KEY_ID", "admin")
SK = os.environ.get("OVFS_TEST_S3_SECRET_ACCESS_KEY", "adminsecret")
REGION = "us-east-1"

_conn = None


def _hmac(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def head_size(key):
    """Content-Length of bucket/key on the server, -1 when absent."""
    global _conn
    u = urllib.parse.urlparse(ENDPOINT)
    path = "/" + BUCKET + "/" + urllib.parse.quote(key.lstrip("/"), safe="/-_.~")
    now = datetime.datetime.now(datetime.timezone.utc)
    amzdate, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = "UNSIGNED-PAYLOAD"
    headers = {"host": u.netloc, "x-amz-content-sha256": payload, "x-amz-date": amzdate}
    signed = ";".join(sorted(headers))
    canon = "\n".join(["HEAD", path, "", "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), signed, payload])
    scope = f"{day}/{REGION}/s3/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope, hashlib.sha256(canon.encode()).hexdigest()])
    k = _hmac(_hmac(_hmac(_hmac(("AWS4" + SK).encode(), day), REGION), "s3"), "aws4_request")
    sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = f"AWS4-HMAC-SHA256 Credential={AK}/{scope}, SignedHeaders={signed}, Signature={sig}"
    for attempt in range(2):
        try:
            if _conn is None:
                _conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)
            _conn.request("HEAD", path, headers=headers)
            r = _conn.getresponse()
            r.read()
            if r.status == 404:
                return -1
            if r.status != 200:
                raise RuntimeError(f"HEAD {key}: HTTP {r.status}")
            return int(r.getheader("content-length", "-1"))
        except (http.client.HTTPException, OSError):
            _conn = None
            if attempt:
                raise
    return -1


def pattern(n):
    return (hashlib.sha256(b"ovfs-bench").digest() * (n // 32 + 1))[:n]


def cmd_write(path, total, key):
    chunk = bytearray(os.urandom(1 << 20))
    t0 = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    done = 0
    while done < total:
        n = min(len(chunk), total - done)
        chunk[0:8] = done.to_bytes(8, "little")  # no two MiB alike
        os.write(fd, memoryview(chunk)[:n])
        done += n
    os.fsync(fd)
    fsync_s = time.monotonic() - t0
    size_at_fsync = head_size(key)
    os.close(fd)
    close_s = time.monotonic() - t0
    size_at_close = head_size(key)
    print(json.dumps({"fsync_s": fsync_s, "close_s": close_s, "durable_at_fsync": size_at_fsync == total,
                      "size_at_fsync": size_at_fsync, "durable_at_close": size_at_close == total}))


def cmd_small(d, count, size, keyprefix):
    os.makedirs(d, exist_ok=True)
    data = pattern(size)
    secs, durable = 0.0, 0
    for i in range(count):
        name = f"s{i:05d}"
        t0 = time.monotonic()
        fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
        secs += time.monotonic() - t0
        if head_size(f"{keyprefix}/{name}") == size:
            durable += 1
    print(json.dumps({"secs": secs, "durable": durable, "count": count}))


def main(a):
    if len(a) == 4 and a[0] == "write":
        cmd_write(a[1], int(a[2]), a[3])
    elif len(a) == 5 and a[0] == "small":
        cmd_small(a[1], int(a[2]), int(a[3]), a[4])
    elif len(a) == 2 and a[0] == "head":
        print(head_size(a[1]))
    else:
        sys.stderr.write(__doc__)
        return 64
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
