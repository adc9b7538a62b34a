"""Feedback data: record types, strict readers and writers, chat rendering, shipped prompt sets."""

from rlhflab.data.prompts import PROMPT_SETS, load_prompt_set, load_prompts
from rlhflab.data.readers import read_records, read_rows, records_to_dataset, write_records
from rlhflab.data.records import (
    RECORD_TYPES,
    Demonstration,
    LanguageFeedback,
    Preference,
    Prompt,
    Ranking,
    Rating,
    Samples,
    parse_scale,
    ranking_to_preferences,
    record_type,
)
from rlhflab.data.render import encode_prompts, prompt_text, render_completion, render_prompt

__all__ = [
    "PROMPT_SETS",
    "RECORD_TYPES",
    "Demonstration",
    "LanguageFeedback",
    "Preference",
    "Prompt",
    "Ranking",
    "Rating",
    "Samples",
    "encode_prompts",
    "load_prompt_set",
    "load_prompts",
    "parse_scale",
    "prompt_text",
    "ranking_to_preferences",
    "read_records",
    "read_rows",
    "record_type",
    "records_to_dataset",
    "render_completion",
    "render_prompt",
    "write_records",
]
