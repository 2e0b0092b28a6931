"""The trade-off report of a run folder: tables, a latency-vs-PSNR Pareto plot, per-task bars, visual
comparisons and a recommended operating point, as self-contained HTML with Markdown and JSON beside it."""

from datprl_edge.report.build import ReportResult, build_report
from datprl_edge.report.recommend import DEFAULT_MAX_DROP, Recommendation, recommend

__all__ = ["DEFAULT_MAX_DROP", "Recommendation", "ReportResult", "build_report", "recommend"]
