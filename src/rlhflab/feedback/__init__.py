"""Feedback: oracles R* (Section 4.1), simulated annotators and pools (Sections 4.2, 5.1, 7.3),
agreement metrics (Section 7.3.3)."""

from rlhflab.feedback.agreement import inter_annotator_agreement, oracle_agreement, pairwise_agreement
from rlhflab.feedback.annotators import (
    AnnotatorPool,
    SimulatedAnnotator,
    annotate_language_feedback,
    annotate_pairs,
    annotate_rankings,
    annotate_ratings,
    make_pool,
)
from rlhflab.feedback.oracles import brevity_oracle, keyword_oracle, load_oracle, score_batch, sentiment_oracle

__all__ = [
    "AnnotatorPool",
    "SimulatedAnnotator",
    "annotate_language_feedback",
    "annotate_pairs",
    "annotate_rankings",
    "annotate_ratings",
    "brevity_oracle",
    "inter_annotator_agreement",
    "keyword_oracle",
    "load_oracle",
    "make_pool",
    "oracle_agreement",
    "pairwise_agreement",
    "score_batch",
    "sentiment_oracle",
]
