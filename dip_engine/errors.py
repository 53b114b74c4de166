"""Errors about the user's input: a stable code and a message that names the problem."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input (unreadable image, wrong mask size, bad option value).

    ``code`` is a stable machine-readable token (``invalid_image``,
    ``image_too_small``, ``image_too_large``, ``mask_size_mismatch``,
    ``mask_not_allowed``, ``mask_required``, ``reference_size_mismatch``,
    ``kernel_not_allowed``, ``kernel_required``, ``kernel_too_large``,
    ``invalid_kernel``, ``invalid_parameter``); the API puts it in its JSON error body and the
    CLI prints the message on one line.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
