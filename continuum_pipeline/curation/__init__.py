"""Curation: from scored candidates to a versioned training dataset."""
