"""Framework integrations (SPEC section 10). Each module imports its framework on import and raises with the
install command when it is missing: ``sbkernels.integrations.hf`` (Hugging Face ``transformers.Trainer``)."""
