#!/usr/bin/env bash
# Read a back-end's objects with a client independent of the daemon under test, for
# tests/guest/scripts/verify.sh --cat (which runs `CMD PATH`, PATH relative to the share root).
#
# usage: external.sh s3-cat BASE_URL KEY    print the bytes of object BASE_URL/KEY
#   BASE_URL  endpoint and bucket, e.g. http://127.0.0.1:18333/test (path-style)
#   env S3_AK / S3_SK (default admin / adminsecret, as tests/tools/s3-local.sh), S3_REGION
#   (default us-east-1). The request is SigV4-signed by curl, as s3-local.sh itself does.
# e.g. verify.sh guest.log --cat 'tests/guest/scripts/external.sh s3-cat http://127.0.0.1:18333/test'
# Exit status: curl's (non-zero on any HTTP error, e.g. 404 for a missing object).
set -euo pipefail

usage() { sed -n '2,10p' "$0" >&2; exit 64; }
[ $# -eq 3 ] || usage
case "$1" in
  s3-cat)
    base=${2%/} key=${3#/}
    exec curl -sSf --aws-sigv4 "aws:amz:${S3_REGION:-us-east-1}:s3" \
         --user "${S3_AK:-admin}:${S3_SK:-adminsecret}" \
         -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$base/$key"
    ;;
  *) usage ;;
esac
