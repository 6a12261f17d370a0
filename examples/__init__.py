"""Programs that use sbkernels the way a user would; not part of the installed package."""
