"""Routing strategies behind one interface (`base.Router`), a name -> class registry and one loader
(`registry.load_router`). Import `mixllm.routers.registry` for the registry: this package module stays light so
that `mixllm.router` (which subclasses `Router`) can import `mixllm.routers.base` without a cycle."""
