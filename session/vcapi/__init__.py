"""didmesh.session.vcapi: the W3C VC API (issue and verify) over didmesh's identity layer
(specs/vc-api.yaml, specs/credentials.md section 9)."""
