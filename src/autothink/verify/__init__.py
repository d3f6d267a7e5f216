"""Verifiers: `verify(kind, prediction, reference)` over one registry; one module per kind."""
import autothink.verify.code  # noqa: F401
from autothink.verify import choice, general, gym, math  # noqa: F401  (each registers its kind)
from autothink.verify.registry import (
    VERIFIERS,
    Verdict,
    answer_text,
    get_verifier,
    register,
    verify,
    verify_many,
)

__all__ = ["VERIFIERS", "Verdict", "answer_text", "get_verifier", "register", "verify", "verify_many"]
