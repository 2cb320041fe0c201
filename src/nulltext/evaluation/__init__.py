"""Measuring: metrics (`metrics`, `perceptual`), the edit benchmark and its cases (`edit_bench`), PIE-Bench
(`pie_bench`), the paper's study (`study`, `study_photos`)."""
