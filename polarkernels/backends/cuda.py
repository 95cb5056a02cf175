"""Placeholder until the CUDA backend lands: reports itself unavailable."""

NAME = "cuda"


def available() -> tuple[bool, str]:
    return False, "the CUDA backend is not built yet"
