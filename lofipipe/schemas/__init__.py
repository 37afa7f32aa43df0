"""Config dataclasses and Arrow table schemas: the contracts between stages."""
