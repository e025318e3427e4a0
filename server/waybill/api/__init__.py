"""HTTP blueprints: thin handlers that parse, authorise, call the core and render."""
