"""didmesh.relay: the community relay (server, stores, client, wire protocol).

The relay knows nothing of MPyC or sessions beyond an opaque session id.
Specification: specs/relay.md and specs/relay-api.yaml. Public entry points:

* :mod:`didmesh.relay.envelope` -- ``seal``/``open_envelope``, ``Envelope`` (sans-IO);
* :mod:`didmesh.relay.auth` and :mod:`didmesh.relay.protocol` -- authentication and the
  WebSocket link/push protocols (sans-IO, no aiohttp server imports);
* :mod:`didmesh.relay.client` -- ``RelayClient`` (post, inbox, ack, open_link -> ``Link``);
* :mod:`didmesh.relay.linkclient` -- ``LinkClient`` (open_link only, no aiohttp: the mesh);
* :mod:`didmesh.relay.errors` -- ``RelayError`` and its stable codes;
* :mod:`didmesh.relay.server` -- running a relay (``python -m didmesh.relay``).
"""
