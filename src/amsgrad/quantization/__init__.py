"""Low-memory optimizer state: the formats, defined once, in readable torch code."""
