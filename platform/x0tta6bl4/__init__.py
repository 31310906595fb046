"""x0tta6bl4: a Ray-based platform that keeps a mesh network healthy on its own."""

__version__ = "0.1.0"

#: Ray namespace every named actor of the platform lives in.
RAY_NAMESPACE = "x0tta6bl4"
