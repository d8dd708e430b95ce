"""The read side (read model, projector, query API). Not built yet: see the open issues."""
