"""didmesh.identity.proofs: proof suites for Verifiable Credentials."""
