"""vlir built-ins."""
