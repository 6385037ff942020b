"""The sentex version, in a module of its own: importing it imports none of sentex's stages."""

__version__ = "0.1.0"
