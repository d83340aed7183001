"""A compact console logger for runs started from a terminal (the demo): one short line per message.

Dagster's default console logger prints run ids, pids and every structured event at DEBUG; the full log
stays in the instance (and the UI) either way.
"""

import logging
import sys

import dagster as dg


class _Compact(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None) or {}
        where = meta.get("step_key") or meta.get("job_name") or "dagster"
        text = f"      {where}: {meta.get('orig_message', record.getMessage())}"
        event = meta.get("dagster_event")
        error = getattr(getattr(event, "event_specific_data", None), "error", None) if event else None
        return text + (f"\n{error.to_string()}" if error else "")


@dg.logger(config_schema={"log_level": dg.Field(str, default_value="INFO")},
           description="One short line per message (step: text), no run ids; INFO and above by default.")
def compact_console(init_context: dg.InitLoggerContext) -> logging.Logger:
    # A private Logger object: not registered globally, so a new run never stacks a second handler.
    logger = logging.Logger("continuum.console", init_context.logger_config["log_level"].upper())
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Compact())
    logger.addHandler(handler)
    return logger


COMPACT_RUN_CONFIG = {"loggers": {"compact_console": {"config": {"log_level": "INFO"}}}}
