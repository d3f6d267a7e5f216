"""Verifiers: `verify(kind, prediction, reference)` over one registry."""
from autothink.verify.registry import VERIFIERS, Verdict, answer_text, get_verifier, register, verify

__all__ = ["VERIFIERS", "Verdict", "answer_text", "get_verifier", "register", "verify"]
