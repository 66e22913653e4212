"""End-to-end jobs behind the commands: each takes one config dataclass and returns a result."""
