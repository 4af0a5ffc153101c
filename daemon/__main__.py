"""``python -m vouch.daemon`` is the ``vouch`` command."""

from vouch.daemon.cli import main

main()
