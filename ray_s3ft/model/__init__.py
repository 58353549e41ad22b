"""The built-in tiny model: where it lives, how it is built, how prompts are encoded."""
