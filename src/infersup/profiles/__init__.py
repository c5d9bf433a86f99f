"""Profiles: schema, YAML and models.conf loaders, discovery."""
