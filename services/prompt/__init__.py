"""PromptService: prompts as code, with immutable versions, typed variables and movable labels."""
