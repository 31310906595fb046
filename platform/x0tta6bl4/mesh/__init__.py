"""Mesh topology, fault catalogue and MeshShard actors (vectorised node simulators)."""
