"""Feedback data: record types, strict readers and writers (TRL dataset types, public schemas), chat
rendering, shipped prompt sets."""

from rlhflab.data.prompts import PROMPT_SETS, load_evaluation_sets, load_prompt_set, load_prompts
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
from rlhflab.data.render import (
    chat_template_choice,
    completion_text,
    encode_prompt_completion,
    encode_prompts,
    prompt_text,
    render_completion,
    render_prompt,
)
from rlhflab.data.schemas import SCHEMAS
from rlhflab.data.trl_types import TRL_TYPES, dataset_format, dataset_type, extract_prompt

__all__ = [
    "PROMPT_SETS",
    "RECORD_TYPES",
    "SCHEMAS",
    "TRL_TYPES",
    "Demonstration",
    "LanguageFeedback",
    "Preference",
    "Prompt",
    "Ranking",
    "Rating",
    "Samples",
    "chat_template_choice",
    "completion_text",
    "dataset_format",
    "dataset_type",
    "encode_prompt_completion",
    "encode_prompts",
    "extract_prompt",
    "load_prompt_set",
    "load_evaluation_sets",
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
