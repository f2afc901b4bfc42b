"""Built-in vlir components. Nothing here is imported until a spec or the registry asks for it."""
