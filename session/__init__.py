"""didmesh.session: invites, rosters, the mesh, MPyC runs and the CLI."""
