"""didmesh.identity: DIDs, keys, the keystore and Verifiable Credentials.

This layer knows nothing of sessions, relays or MPyC.
"""
