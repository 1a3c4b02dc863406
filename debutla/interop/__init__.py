"""Adapters to other ecosystems (scipy LinearOperator; more in later issues)."""

from .scipy import DeButLinearOperator, aslinearoperator

__all__ = ["DeButLinearOperator", "aslinearoperator"]
