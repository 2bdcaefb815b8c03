#!/bin/sh
# The identity workflow on a throw-away home: two identities, a membership credential
# issued by one to the other, verified, then a tampered copy rejected.
set -eu
DIDMESH_HOME="$(mktemp -d)"
export DIDMESH_HOME
trap 'rm -rf "$DIDMESH_HOME"' EXIT INT TERM

echo "== identities (in $DIDMESH_HOME)"
didmesh id new --name consortium --no-passphrase
didmesh id new --name alice --no-passphrase
ALICE=$(didmesh id show alice --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["did"])')

echo "== the consortium vouches for alice"
printf '{"memberOf": "Example Consortium", "role": "analyst"}\n' > "$DIDMESH_HOME/claims.json"
didmesh credential issue --as consortium --subject "$ALICE" --claims "$DIDMESH_HOME/claims.json" \
    --type Membership --valid-until 2099-01-01T00:00:00Z --out "$DIDMESH_HOME/membership.json"

echo "== anyone can verify it"
didmesh verify "$DIDMESH_HOME/membership.json"

echo "== a tampered copy is rejected"
sed 's/analyst/admin/' "$DIDMESH_HOME/membership.json" > "$DIDMESH_HOME/tampered.json"
if didmesh verify "$DIDMESH_HOME/tampered.json"; then
    echo "tampered credential verified: this is a bug" >&2
    exit 1
fi
echo "== done"
