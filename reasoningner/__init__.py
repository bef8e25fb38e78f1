"""reasoningner: teach LLMs to do named entity recognition by reasoning before answering."""

from reasoningner.spans import Example, Schema, Span, SpanError

__all__ = ["Example", "Schema", "Span", "SpanError"]
__version__ = "0.1.0"
