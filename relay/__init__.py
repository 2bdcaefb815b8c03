"""didmesh.relay: the community relay (server, stores, client, wire protocol).

The relay knows nothing of MPyC or sessions beyond an opaque session id.
"""
