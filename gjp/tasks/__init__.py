"""Downstream tasks: labels synthesised from tags per tile (``gjp mktask``)."""
