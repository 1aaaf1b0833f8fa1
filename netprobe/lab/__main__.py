"""``python -m netprobe.lab``: the ``netprobe lab`` commands on their own."""

import argparse
import logging
import sys

from netprobe.lab.cli import configure_parser, run


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m netprobe.lab",
        description="Emulated link between two network namespaces (needs root and /dev/net/tun).",
    )
    configure_parser(parser)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
