"""Verifiers: the building blocks of the judge (math answers, code in a sandbox, LLM verdicts)."""
