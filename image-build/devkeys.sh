#!/usr/bin/env bash
# devkeys.sh DIR ORG: a CA and a bundle-signing certificate under it, made once in DIR.
# The CA certificate becomes RAUC's keyring in the image; bundles are signed with the
# signing key. `make image` uses it when no production key is given (AFRA_SIGNING_KEY);
# `make image-test` also makes a second, unrelated set to show a foreign bundle refused.
set -euo pipefail
dir=$1 org=$2
[ -f "$dir/signing.pem" ] && exit 0
mkdir -p "$dir"; chmod 0700 "$dir"
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout ca.key -out ca.pem -days 3650 -subj "/O=$org/CN=$org update CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout signing.key -out signing.csr -subj "/O=$org/CN=$org bundle signing"
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n' > signing.ext
openssl x509 -req -in signing.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
  -extfile signing.ext -out signing.pem 2>/dev/null
rm -f signing.csr signing.ext ca.srl
chmod 0600 ca.key signing.key
