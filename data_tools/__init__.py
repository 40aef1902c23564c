"""Offline data CLIs: `python -m data_tools.NAME --help`. They may import wan_train; wan_train never imports them."""
