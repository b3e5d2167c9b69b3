"""Python modules shared by the Python-backend models; Triton ignores plain files in a repository."""
