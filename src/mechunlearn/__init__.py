"""mechunlearn: localize the components that look a fact up, fine-tune only those, and test
whether the change holds up."""

__version__ = "0.1.0"
