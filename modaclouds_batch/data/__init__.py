"""Data objects: uploaded once, used by many jobs, and the answers jobs produce."""
