"""Package data: the default label list of the zero-shot tags (esc50_labels.txt)."""
