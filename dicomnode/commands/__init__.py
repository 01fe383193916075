"""One module per CLI sub-command; each has ``add_arguments(parser)`` and ``run(args) -> int``.

Modules are imported only when their command runs, so ``dicomnode config check`` does
not pay for importing torch.
"""
