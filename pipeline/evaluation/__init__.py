"""Evaluation: confusion-matrix metrics, benchmark layouts (mmseg), and the evaluation protocol."""
