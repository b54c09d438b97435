"""The sidecar's own files: safe YAML, size caps, hot reload in a fresh process, user regexes, loggable error text."""
