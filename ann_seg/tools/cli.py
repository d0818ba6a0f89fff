"""What every tool (``ann-seg <command>``, ``tools/*.py``) shares: known errors as one line on
stderr with exit status 2 (or the error's own ``exit_status``), tracebacks only for unexpected
errors or with ``--debug``, 130 on Ctrl-C (SIGINT) and 143 on SIGTERM where the tool handles it
(``ann_seg.io.interrupts``), and quiet defaults.

A tool's script is::

    def main(argv=None) -> int: ...          # parse arguments, call the library, return status

    if __name__ == '__main__':
        sys.exit(cli.run(main))

``ann_seg.tools`` dispatches ``ann-seg <command>`` to it.
"""

import argparse
import logging
import os
import re
import sys
import traceback
import warnings
from typing import Callable, Optional, Sequence

from mmengine.config import DictAction
from mmengine.config.utils import ConfigParsingError
from mmengine.logging import MMLogger

from ann_seg.inference import InferenceInputError, OutputStorageError
from ann_seg.inference.backends import BackendError
from ann_seg.io import ImageError
from ann_seg.mmseg import CorruptCheckpointError, ModelLoadError, UnsafeCheckpointError
from ann_seg.mmseg.config import ConfigError, UserOptions

# errors whose message says all a user needs: no traceback
KNOWN_ERRORS = (
    BackendError,
    ConfigError,
    ConfigParsingError,
    CorruptCheckpointError,
    FileExistsError,
    FileNotFoundError,
    ImageError,
    InferenceInputError,
    ModelLoadError,
    OutputStorageError,
    UnsafeCheckpointError,
)
USAGE_ERROR = 2
INTERRUPTED = 130  # 128 + SIGINT

# harmless warnings every entry point would otherwise print (pkg_resources through mmengine,
# mmseg's loss and deprecation chatter); the library itself filters nothing
_QUIET_WARNINGS = (
    ("ignore", r"pkg_resources is deprecated", UserWarning),
    ("ignore", r"Deprecated call to `pkg_resources", DeprecationWarning),
    ("ignore", r".*`?loss_name`?.*", UserWarning),
    ("ignore", r".*Default ``avg_non_ignore``.*", UserWarning),
    ("ignore", r"``build_loss`` would be deprecated soon", UserWarning),
    ("ignore", r"`broadcast_buffers` is deprecated", FutureWarning),
    ("ignore", r"The draw is False", UserWarning),
    ("ignore", r".*instance named of .* has been created", UserWarning),  # mmengine's managers
)
# mmengine log lines that say nothing to act on (deprecations inside mmengine itself, a metric
# without a prefix, "resumed from None" on a first run)
_QUIET_LOG_LINES = re.compile(
    r"The prefix is not set in metric class|\"FileClient\" will be deprecated|"
    r"\"HardDiskBackend\" is the alias|Did not find last_checkpoint to be resumed|"
    r"Auto resumed from the latest checkpoint None"
)


def _keep_log_record(record: logging.LogRecord) -> bool:
    return not _QUIET_LOG_LINES.search(record.getMessage())


def _quiet_mmengine_logs() -> None:
    """``_keep_log_record`` as a filter of every mmengine logger, present and future."""
    if getattr(MMLogger, "_ann_seg_quiet", False):
        return
    init = MMLogger.__init__

    def quiet_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.addFilter(_keep_log_record)

    MMLogger.__init__ = quiet_init
    MMLogger._ann_seg_quiet = True
    for logger in MMLogger._instance_dict.values():
        logger.addFilter(_keep_log_record)


def quiet_warnings() -> None:
    """Filter the known-harmless warnings (see ``_QUIET_WARNINGS``) in this process and in
    the processes it starts (``PYTHONWARNINGS`` is inherited)."""
    for action, message, category in _QUIET_WARNINGS:
        warnings.filterwarnings(action, message=message, category=category)
    _quiet_mmengine_logs()
    extra = "ignore::DeprecationWarning:pkg_resources"
    current = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = f"{current},{extra}" if current else extra


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug", action="store_true", help="print the full traceback of any error"
    )


class CfgOptionsAction(DictAction):
    """mmengine's ``DictAction`` (``key=value`` pairs) whose keys ``load_config`` checks
    against the config: a key that does not exist is refused with the closest existing one;
    ``+key=value`` adds a new key on purpose."""

    def __call__(self, parser, namespace, values, option_string=None):
        for pair in values:
            if "=" not in pair:
                raise ConfigError(f"{option_string} {pair!r}: not KEY=VALUE (no '=')")
        super().__call__(parser, namespace, values, option_string)
        setattr(namespace, self.dest, UserOptions(getattr(namespace, self.dest) or {}))


def add_cfg_options_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=CfgOptionsAction,
        metavar="KEY=VALUE",
        help="override config keys, e.g. train_cfg.max_iters=100 model.test_cfg.mode=slide; "
        "a key that is not in the config is refused (a typo), +KEY=VALUE adds one",
    )


def add_runner_arguments(parser: argparse.ArgumentParser, dist_command: str) -> None:
    """``--launcher``, ``--verbose`` and torchrun's ``--local-rank`` of the tools that run
    mmengine's Runner (train, test); ``dist_command`` is the command that launches them."""
    parser.add_argument(
        "--launcher",
        choices=["none", "pytorch", "slurm", "mpi"],
        default="none",
        help=f"job launcher (default none; ann-seg {dist_command} sets pytorch)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="print the config and environment dump too"
    )
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)


def parse_runner_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with ``LOCAL_RANK`` set from ``--local-rank`` unless the
    launcher set it."""
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def _wants_debug(argv: Optional[Sequence[str]]) -> bool:
    return "--debug" in (sys.argv[1:] if argv is None else argv)


def run(main: Callable[..., Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
    """Call ``main(argv)`` with the known-harmless warnings filtered; a known error becomes
    ``error: <message>`` on stderr and exit status 2 or its ``exit_status`` (the traceback
    too with ``--debug``); an interrupt exits 130, or its ``exit_status`` (SIGTERM: 143);
    anything else keeps its traceback."""
    quiet_warnings()
    debug = _wants_debug(argv)
    try:
        status = main(argv) if argv is not None else main()
    except KNOWN_ERRORS as error:
        if debug:
            traceback.print_exc()
        message = str(error).strip() or type(error).__name__
        first, *rest = message.splitlines()
        print(f"error: {first}", file=sys.stderr)
        for line in rest[:20]:
            print(f"  {line}", file=sys.stderr)
        return getattr(error, "exit_status", USAGE_ERROR)
    except KeyboardInterrupt as error:
        return _interrupted(error)
    except SyntaxError as error:
        # mmengine's Config.pretty_text (checkpoint saves, config dumps) turns any exception
        # raised while yapf formats, Ctrl-C included, into "Failed to format the config file"
        # followed by the whole config
        interrupt = _interrupt_in_chain(error)
        if interrupt is None:
            raise
        return _interrupted(interrupt)
    return int(status or 0)


def _interrupt_in_chain(error: BaseException) -> Optional[KeyboardInterrupt]:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _interrupted(error: KeyboardInterrupt) -> int:
    """SIGINT: ``interrupted``, exit status 130; SIGTERM (``Terminated`` of training and
    testing): ``terminated (SIGTERM)``, 143."""
    status = getattr(error, "exit_status", INTERRUPTED)
    print(str(error) if status != INTERRUPTED else "interrupted", file=sys.stderr)
    return status
