"""Storage accountant: the paper's budget formulas (Eq. S11-S17), plans for codec specs,
a (k, dc, dh) solver (Table S8) and byte-exact attribution of real .ddz files.
All values are bytes; ``MiB = 1024**2`` and ``GiB = 1024**3`` (the paper's "MB"/"GB")."""

from .accountant import PlanRow, Proposal, Row, attribute, parse_spec, plan, solve, summarize
from . import formulas  # noqa: F401 (codec.budget.formulas)
from .formulas import (GiB, MiB, SD_VAE_INT8_BYTES, bits_for, eq8, fmt_bytes, lpld_pool, lpld_terms, s11, s12,
                       s15_stored_terms, s16_stored_terms, s17_stored_terms,
                       s12_stored_terms, s12_terms, s13, s13_limit, s14, s15, s15_terms, s16, s16_terms, s17, s17_terms,
                       s11_rows, s12_row_terms, s15_row_terms, s16_row_terms, s17_row_terms,
                       tucker_chunk_floats, video_pixel_budget, video_total)

__all__ = ["MiB", "GiB", "s11", "s12", "s12_terms", "s12_stored_terms", "s13", "s13_limit", "s14", "s15", "s15_terms",
           "s16", "s16_terms", "s17", "s17_terms", "s15_stored_terms", "s16_stored_terms", "s17_stored_terms", "eq8", "bits_for",
           "s11_rows", "s12_row_terms", "s15_row_terms", "s16_row_terms", "s17_row_terms", "lpld_pool", "lpld_terms", "video_pixel_budget",
           "tucker_chunk_floats", "video_total", "SD_VAE_INT8_BYTES", "fmt_bytes", "plan", "parse_spec", "PlanRow",
           "solve", "Proposal", "attribute", "summarize", "Row"]
