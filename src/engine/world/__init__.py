"""The world box: entities and components (esper), checkpoints, component migration."""

from engine.world.checkpoint import CheckpointError, PendingComponent
from engine.world.components import component, component_key, is_component
from engine.world.migration import MigrationError, migrate_instance
from engine.world.world import World

__all__ = [
    "CheckpointError",
    "MigrationError",
    "PendingComponent",
    "World",
    "component",
    "component_key",
    "is_component",
    "migrate_instance",
]
